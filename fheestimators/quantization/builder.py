"""Post-training quantization: walk the float graph and write the integer program.

The walk keeps, for every ONNX tensor, either a float constant or an ``Encrypted``
value. Linear ops write integer steps; element-wise ops only compose a pending
function; a table lookup is written only where a value must become an integer again
(the input of the next linear op, a shape change, an encrypted addition). That is how
bias, activation and requantization between two linear layers cost one lookup.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..onnx.graph import Graph, Node
from ..onnx.ops import OPS, quant_bounds
from .program import IntegerProgram, Output
from .quantizers import MAX_ACCUMULATOR_BIT_WIDTH, NBits, UniformQuantizer
from .steps import Shift, Step, TableLookup
from .values import Encrypted

Rule = Callable[["Builder", Node, list], list]
RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    """Register how an op acts on encrypted values (see ``rules.py``)."""

    def decorator(func: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = func
        return func

    return decorator


class Builder:
    """Holds the program being written and the calibration data flowing through it."""

    def __init__(self, graph: Graph, calibration: Sequence[np.ndarray], n_bits: NBits,
                 qat: bool = False, strict_qat: bool = False):
        self.graph = graph
        self.n_bits = n_bits
        self.qat = qat
        self.strict_qat = strict_qat
        self.skipped: set[int] = set()
        self.batch = calibration[0].shape[0]
        self.steps: list[Step] = []
        self.ints: dict[str, np.ndarray] = {}
        self.values: dict[str, object] = dict(graph.constants)
        self.input_quantizers = []
        self.input_names = []
        self._names: set[str] = set()
        for name, data in zip(graph.inputs, calibration):
            quantizer, entry_quant = self._qat_input_quantizer(name) if qat else (None, None)
            if quantizer is None and strict_qat:
                raise ValueError(
                    f"the model input {name!r} is not quantized: put a brevitas QuantIdentity "
                    "at the entry of the network"
                )
            quantizer = quantizer or UniformQuantizer.unsigned(data, n_bits.model_inputs)
            self.input_quantizers.append(quantizer)
            q_name = self.fresh(f"{name}.q")
            self.input_names.append(q_name)
            self.ints[q_name] = quantizer.quantize(data)
            source = q_name
            if quantizer.zero_point:
                source = self.add(Shift(f"{name}.zero_point", [q_name], self.fresh(f"{name}.centered"),
                                        constant=-quantizer.zero_point))
            self.values[name] = Encrypted(source, quantizer.scale, 0.0, quantized=True, origin=name)
            if entry_quant is not None:  # already applied, in the clear
                self.values[entry_quant.outputs[0]] = self.values[name]

    def _qat_input_quantizer(self, name: str) -> tuple[Optional[UniformQuantizer], Optional[Node]]:
        """A ``Quant`` applied straight to an input becomes the input quantizer, in the clear.

        Returns the quantizer and that ``Quant`` node (then skipped by the walk), or Nones.
        """
        for index, node in enumerate(self.graph.nodes):
            if node.op_type != "Quant" or node.inputs[0] != name:
                continue
            if not all(n in self.graph.constants for n in node.inputs[1:]):
                return None, None
            scale, zero_point, bits = (self.graph.constants[n] for n in node.inputs[1:])
            if np.size(scale) != 1 or np.size(zero_point) != 1 or float(zero_point) != round(float(zero_point)):
                return None, None
            low, high = quant_bounds(bits, node.attrs.get("signed", 1), node.attrs.get("narrow", 0))
            self.skipped.add(index)
            return UniformQuantizer(float(scale), int(round(float(zero_point))), low, high), node
        return None, None

    # -- writing the program -------------------------------------------------
    def fresh(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._names:
            candidate, i = f"{name}.{i}", i + 1
        self._names.add(candidate)
        return candidate

    def add(self, step: Step) -> str:
        """Append a step and run it on the calibration data; returns its output name."""
        self.steps.append(step)
        self.ints[step.output] = step.numpy(*[self.ints[name] for name in step.inputs])
        return step.output

    def float_values(self, value: Encrypted) -> np.ndarray:
        return value.dequantize(self.ints[value.source])

    def sample_shape(self, value: Encrypted) -> tuple:
        return self.ints[value.source].shape[1:]

    # -- quantizing ------------------------------------------------------------
    def quantize_weights(self, weights: np.ndarray, node: Node, index: int, channel_axis: int,
                         transposed: bool = False) -> tuple[np.ndarray, Union[float, np.ndarray]]:
        """Integer weights and their scale: one number, or one per output channel (1-D).

        Post-training: a symmetric ``op_weights``-bit quantizer. QAT: the trained grid,
        read from the ``Quant`` node that produced the weights (per tensor, or per
        output channel along ``channel_axis``; ``transposed`` if the op transposes the
        weights it was given) or found in their values.
        """
        if self.qat:
            scale = self.graph.weight_scales.get(node.inputs[index])
            if scale is not None and np.size(scale) > 1:
                scale = _channel_scale(scale.T if transposed else scale, weights, channel_axis)
            scale = _grid_scale(weights) if scale is None else scale
            if scale is not None:
                q = np.rint(weights / scale)
                if np.allclose(q * scale, weights, rtol=0,
                               atol=1e-6 * max(float(np.max(scale)), 1e-12) + 1e-7 * np.abs(weights).max()):
                    widest = float(np.abs(q).max())
                    if widest >= 2**MAX_ACCUMULATOR_BIT_WIDTH:
                        raise ValueError(
                            f"the weights of layer {node.name!r} are integers of {int(np.log2(widest)) + 2} "
                            f"bits; FHE holds at most {MAX_ACCUMULATOR_BIT_WIDTH}-bit integers: lower the "
                            "layer's weight bit-width (brevitas weight_bit_width)"
                        )
                    return q.astype(np.int64), float(scale) if np.size(scale) == 1 else np.reshape(scale, -1)
            if self.strict_qat:
                raise ValueError(
                    f"the weights of layer {node.name!r} are not quantized: use a brevitas "
                    "QuantLinear / QuantConv2d layer"
                )
        quantizer = UniformQuantizer.symmetric(weights, self.n_bits.op_weights)
        return quantizer.quantize(weights), quantizer.scale

    def linear_input(self, value: Encrypted, node: Node) -> Encrypted:
        """The input of a linear layer must be integers: a lookup makes them if needed."""
        if self.strict_qat and not value.quantized:
            raise ValueError(
                f"the input of layer {node.name!r} is not quantized (after "
                f"{' ∘ '.join(reversed(value.ops)) or value.origin or 'the previous layer'}): put a "
                "brevitas QuantIdentity (or QuantReLU) before it"
            )
        return self.materialize(value, f"{node.name}.input")

    def requantize(self, value: Encrypted, node: Node, params: list) -> Encrypted:
        """A QAT quantizer on an encrypted value: one lookup with the trained scale."""
        scale, zero_point, bits = params
        if np.size(scale) != 1:
            raise ValueError(f"Quant node {node.name!r}: only per-tensor scales are supported")
        scale, attrs = float(scale), node.attrs
        return self._write_lookup(
            value, f"{node.outputs[0]}.q", scale, " ∘ ".join(("quant",) + tuple(reversed(value.ops))),
            lambda floats: np.rint(OPS["Quant"](floats, scale, zero_point, bits, **attrs) / scale),
        )

    def natural_scale(self, value: Encrypted) -> float:
        """The scale ``materialize`` would give: the value's own when already quantized."""
        if value.quantized and np.ndim(value.scale) == 0:
            return float(value.scale)
        return UniformQuantizer.unsigned(self.float_values(value), self.n_bits.op_inputs).scale

    def materialize(self, value: Encrypted, name: str, scale: Optional[float] = None) -> Encrypted:
        """Turn a value into ``op_inputs``-bit integers with one table lookup (if it is not already).

        With ``scale`` the result is expressed on that scale instead of a calibrated one
        (used to add two encrypted tensors).
        """
        if value.quantized and (scale is None or np.array_equal(value.scale, scale)):
            return value
        calib = self.float_values(value)
        if not np.all(np.isfinite(calib)):
            raise ValueError(
                f"node {name!r} produces NaN or inf on the calibration data; "
                "check the model and the input range"
            )
        if scale is None:
            quantizer = UniformQuantizer.unsigned(calib, self.n_bits.op_inputs)
            q_min, q_max = quantizer.q_min - quantizer.zero_point, quantizer.q_max - quantizer.zero_point
            scale = quantizer.scale
        else:
            q_min, q_max = -(2**62), 2**62
        return self._write_lookup(
            value, f"{name}.tlu", scale, " ∘ ".join(reversed(value.ops)) or "requantize",
            lambda floats: np.clip(np.rint(floats / scale), q_min, q_max),
        )

    def _write_lookup(self, value: Encrypted, name: str, scale: float, description: str,
                      to_integers: Callable[[np.ndarray], np.ndarray]) -> Encrypted:
        """Append the lookup ``to_integers(value)`` (integers in units of ``scale``)."""
        dequantize = value.dequantize

        def lookup(q):
            with np.errstate(all="ignore"):
                floats = np.nan_to_num(dequantize(np.asarray(q)), nan=0.0, posinf=1e300, neginf=-1e300)
                return to_integers(floats).astype(np.int64)

        source = self.ints[value.source]
        out = self.add(TableLookup(
            value.origin or name, [value.source], self.fresh(name), function=lookup,
            input_bounds=(int(source.min()), int(source.max())), description=description,
            sample_shape=(1, *source.shape[1:]),
        ))
        return Encrypted(out, scale, 0.0, quantized=True, origin=value.origin)

    # -- walking the graph -----------------------------------------------------
    def build(self) -> IntegerProgram:
        for index, node in enumerate(self.graph.nodes):
            if index in self.skipped:
                continue
            args = [self.values[name] if name else None for name in node.inputs]
            if not any(isinstance(a, Encrypted) for a in args):
                results = node.evaluate(*args)  # shapes and constants computed from shapes
            else:
                func = RULES.get(node.op_type)
                if func is None:
                    raise ValueError(
                        f"ONNX op {node.op_type!r} (node {node.name!r}) is not supported on "
                        f"encrypted values; supported: {', '.join(sorted(RULES))}"
                    )
                results = func(self, node, args)
            for name, result in zip(node.outputs, results):
                self.values[name] = result
        outputs = []
        for name in self.graph.outputs:
            value = self.values[name]
            if not isinstance(value, Encrypted):
                raise ValueError(f"model output {name!r} does not depend on the inputs")
            outputs.append(Output(value.source, value.scale, value.offset, value.fn))
        return IntegerProgram(
            input_names=self.input_names,
            input_quantizers=self.input_quantizers,
            steps=self.steps,
            outputs=outputs,
            sample_shapes=[self.ints[n].shape[1:] for n in self.input_names],
        )


def _channel_scale(scale: np.ndarray, weights: np.ndarray, channel_axis: int) -> Optional[np.ndarray]:
    """``scale`` if it holds one number per output channel of ``weights`` (broadcast against them), else None.

    A scale that varies along any other axis would give the products of one sum
    different scales: no integer accumulator could hold them.
    """
    if scale.ndim != weights.ndim:
        return None
    for axis, (size, full) in enumerate(zip(scale.shape, weights.shape)):
        if size != 1 and (axis != channel_axis % weights.ndim or size != full):
            return None
    return scale


def _grid_scale(weights: np.ndarray) -> Optional[float]:
    """The step of the grid QAT weights lie on: the smallest gap between distinct values."""
    values = np.unique(np.abs(weights[weights != 0]))
    if values.size == 0:
        return None
    gaps = np.diff(np.concatenate([[0.0], values]))
    return float(gaps.min())


def build_program(graph: Graph, calibration: Sequence[np.ndarray], n_bits: NBits,
                  qat: bool = False, strict_qat: bool = False) -> IntegerProgram:
    """Quantize ``graph`` on ``calibration`` (one array per input) into an integer program.

    ``qat`` keeps the model's own quantizers; ``strict_qat`` (Brevitas) also requires
    every linear layer's input and weights to be quantized by the model.
    """
    from . import rules  # noqa: F401  (fills RULES)

    return Builder(graph, calibration, n_bits, qat=qat, strict_qat=strict_qat).build()
