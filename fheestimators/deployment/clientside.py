"""What the client computes in the clear: quantize and clip before encrypting, read
predictions after decrypting. Built from a fitted estimator or a ``QuantizedModule``,
with no weights of the network and no training data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy.special import softmax

from ..quantization.module import QuantizedModule
from ..quantization.program import IntegerProgram
from . import encoding

KINDS = ("classifier", "regressor", "module")


@dataclass
class ClientModel:
    """The model's clear ends: input quantizers and ranges, output dequantizers and the
    ops after the last lookup, and the estimator's reading of its outputs."""

    kind: str
    input_quantizers: list
    input_ranges: list
    sample_shapes: list
    outputs: list
    classes: Optional[np.ndarray] = None
    y_is_1d: bool = False
    _ends: QuantizedModule = field(init=False, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; expected one of {KINDS}")
        # a program without steps: the module's own input checks, clipping and dequantization
        program = IntegerProgram([f"x{i}" for i in range(len(self.input_quantizers))],
                                 list(self.input_quantizers), [], list(self.outputs),
                                 [tuple(int(n) for n in shape) for shape in self.sample_shapes])
        self._ends = QuantizedModule(program)
        self._ends.input_ranges = [(int(low), int(high)) for low, high in self.input_ranges]

    @classmethod
    def from_model(cls, model: Any) -> "ClientModel":
        module = _quantized_module(model)
        kind = "module"
        classes, y_is_1d = None, False
        if hasattr(model, "quantized_module_"):
            kind = "classifier" if hasattr(model, "classes_") else "regressor"
            classes = np.asarray(model.classes_) if kind == "classifier" else None
            if classes is not None and classes.dtype == object and all(isinstance(c, str) for c in classes):
                classes = classes.astype(str)  # pandas' string labels, in a type npz stores
            y_is_1d = bool(getattr(model, "y_is_1d_", False))
        program = module.program
        return cls(kind, list(program.input_quantizers), [tuple(r) for r in module.input_ranges],
                   [list(shape) for shape in program.sample_shapes], list(program.outputs), classes, y_is_1d)

    @property
    def n_inputs(self) -> int:
        return len(self.input_quantizers)

    def quantize(self, *X) -> tuple[np.ndarray, ...]:
        """Checked, quantized and clipped inputs, exactly as ``predict`` makes them."""
        q = self._ends.quantize_input(*X)
        return q if isinstance(q, tuple) else (q,)

    def dequantize(self, q_outputs: tuple[np.ndarray, ...]):
        """The model's float outputs: what ``QuantizedModule.forward`` returns."""
        return self._ends.dequantize_output(*q_outputs)

    def predict(self, q_outputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """What the estimator's ``predict`` (or the module's ``forward``) returns."""
        values = self.dequantize(q_outputs)
        if self.kind == "classifier":
            return self.classes[np.asarray(values).argmax(axis=1)]
        if self.kind == "regressor":
            return values.ravel() if self.y_is_1d else values
        return values

    def predict_proba(self, q_outputs: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.kind != "classifier":
            raise AttributeError(f"a {self.kind} has no predict_proba: it predicts values, use predict")
        return softmax(self.dequantize(q_outputs), axis=1)

    # -- artefact -----------------------------------------------------------------
    def to_bytes(self) -> dict[str, bytes]:
        description = {name: getattr(self, name) for name in
                       ("kind", "input_quantizers", "input_ranges", "sample_shapes", "outputs", "y_is_1d")}
        if self.classes is not None:
            if self.classes.dtype == object:
                raise TypeError("classes_ must be numbers or strings to be saved for the client")
            description["classes"] = self.classes
        tree, arrays = encoding.dumps(description)
        return {"model.json": tree, "model.npz": arrays}

    @classmethod
    def from_bytes(cls, members: dict[str, bytes]) -> "ClientModel":
        description = encoding.loads(members["model.json"], members["model.npz"])
        return cls(**description)


def _quantized_module(model: Any) -> QuantizedModule:
    """The compiled module of an estimator or the module itself, with a clear error otherwise."""
    module = getattr(model, "quantized_module_", model)
    if not isinstance(module, QuantizedModule):
        if hasattr(model, "fit"):
            raise ValueError(f"this {type(model).__name__} is not fitted: call fit before saving it")
        raise TypeError(f"save takes a fitted NeuralNetClassifier/NeuralNetRegressor or a QuantizedModule, "
                        f"got {type(model).__name__}")
    if module.fhe_circuit is None:
        raise ValueError("the module is not compiled: call compile(inputset) before saving it")
    return module
