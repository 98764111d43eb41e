"""The float graph read from an ONNX model: constants, nodes in order, inputs, outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .ops import OPS

# Ops whose result depends on nothing but their inputs, so they fold when all inputs are constant.
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
# Ops that move constant weights without changing their values: their QAT grid carries over
_KEEPS_GRID = {"Transpose", "Reshape", "Identity", "Flatten", "Squeeze", "Unsqueeze", "Cast"}


@dataclass
class Node:
    """One ONNX node with decoded attributes. An omitted optional input is ``""``."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    name: str
    domain: str = ""

    def evaluate(self, *values: np.ndarray | None):
        """Run the op's float semantics from the registry."""
        func = OPS.get(self.op_type)
        if func is None:
            raise ValueError(unsupported_op_message(self))
        result = func(*values, **self.attrs)
        return result if isinstance(result, tuple) else (result,)


def unsupported_op_message(node: Node) -> str:
    return (
        f"ONNX op {node.op_type!r} (node {node.name!r}) is not supported; "
        f"supported ops: {', '.join(sorted(OPS))}"
    )


def _attribute_value(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


@dataclass
class Graph:
    """An ONNX graph as numpy: what the quantization passes walk through.

    Constants (initializers, ``Constant`` nodes and everything computable from them)
    are folded at construction, so ``nodes`` holds only the ops that depend on inputs.
    """

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    onnx_model: onnx.ModelProto | None = None
    # constants that a QAT quantizer put on a grid: name -> the grid's scale
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> "Graph":
        """Read a model as exporters write it: initializers listed among the inputs are constants."""
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"expected an onnx.ModelProto, got {type(model).__name__}")
        graph = model.graph
        constants = {init.name: _as_float(numpy_helper.to_array(init)) for init in graph.initializer}
        inputs = [inp.name for inp in graph.input if inp.name not in constants]
        nodes = [
            Node(
                op_type=node.op_type,
                inputs=list(node.input),
                outputs=list(node.output),
                attrs={a.name: _attribute_value(a) for a in node.attribute},
                name=node.name or f"{node.op_type}_{index}",
                domain=node.domain,
            )
            for index, node in enumerate(graph.node)
        ]
        unsupported = sorted({n.op_type for n in nodes if n.op_type not in OPS})
        if unsupported:
            first = next(n for n in nodes if n.op_type in unsupported)
            raise ValueError(
                f"the model uses ONNX ops that are not supported: {unsupported} "
                f"(first at node {first.name!r}); rewrite the model with supported ops"
            )
        result = cls(inputs=inputs, outputs=[o.name for o in graph.output], nodes=nodes,
                     constants=constants, onnx_model=model)
        result._fold_constants()
        return result

    def _fold_constants(self) -> None:
        remaining = []
        for node in self.nodes:
            if node.op_type not in _NEVER_FOLD and all(
                name == "" or name in self.constants for name in node.inputs
            ):
                values = [self.constants[name] if name else None for name in node.inputs]
                for name, value in zip(node.outputs, node.evaluate(*values)):
                    self.constants[name] = _as_float(np.asarray(value))
                self._track_weight_scale(node)
            else:
                remaining.append(node)
        self.nodes = remaining

    def _track_weight_scale(self, node: Node) -> None:
        """Remember the grid of quantized weights, also through a transpose or reshape.

        A per-channel grid (one scale per output channel, broadcast against the weights)
        follows a transpose; a reshape would lose its axes, so it stops there.
        """
        if node.op_type == "Quant":
            self.weight_scales[node.outputs[0]] = np.asarray(self.constants[node.inputs[1]], dtype=np.float64)
            return
        scale = self.weight_scales.get(node.inputs[0]) if node.op_type in _KEEPS_GRID else None
        if scale is None:
            return
        if np.size(scale) == 1:
            self.weight_scales[node.outputs[0]] = scale
        elif node.op_type == "Transpose":
            perm = node.attrs.get("perm", list(reversed(range(scale.ndim))))
            scale = scale.reshape((1,) * (len(perm) - scale.ndim) + scale.shape)
            self.weight_scales[node.outputs[0]] = np.transpose(scale, perm)
        elif node.op_type in ("Identity", "Cast"):
            self.weight_scales[node.outputs[0]] = scale

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Evaluate the graph in float64 on a batch."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the graph has {len(self.inputs)} inputs, got {len(inputs)}")
        values: dict[str, np.ndarray] = dict(self.constants)
        values.update((name, np.asarray(x, dtype=np.float64)) for name, x in zip(self.inputs, inputs))
        for node in self.nodes:
            args = [values[name] if name else None for name in node.inputs]
            for name, value in zip(node.outputs, node.evaluate(*args)):
                values[name] = value
        return tuple(values[name] for name in self.outputs)


def _as_float(array: np.ndarray) -> np.ndarray:
    """Float constants go to float64 so every computation is in one precision; ints stay ints."""
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64)
    return array
