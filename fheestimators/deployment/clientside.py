"""What the client computes in the clear: quantize and clip before encrypting, read
predictions after decrypting. Built from a fitted estimator or a ``QuantizedModule``,
with no weights of the network and no training data."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

import numpy as np
from scipy.special import softmax

from ..quantization.module import QuantizedModule
from ..quantization.program import IntegerProgram
from . import encoding, preprocessing
from .container import PayloadError

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
    #: the columns of the DataFrame the model was fitted on, if it was
    feature_names: Optional[list] = None
    #: the steps of a fitted Pipeline before the model, run here in the clear (``preprocessing.split``)
    preprocessing: Any = None
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
        """The clear ends of an estimator, a ``QuantizedModule``, or a ``Pipeline`` ending with either."""
        leading, final = preprocessing.split(model)
        module = _quantized_module(final)
        transform = getattr(final, "input_transform_", None)  # an estimator's bins or scaling run on the client too
        if transform is not None:
            from sklearn.pipeline import Pipeline

            leading = transform if leading is None else Pipeline([("preprocessing", leading), ("input", transform)])
        kind = "module"
        classes, y_is_1d = None, False
        if hasattr(final, "quantized_module_"):
            kind = "classifier" if hasattr(final, "classes_") else "regressor"
            classes = np.asarray(final.classes_) if kind == "classifier" else None
            if classes is not None and classes.dtype == object and all(isinstance(c, str) for c in classes):
                classes = classes.astype(str)  # pandas' string labels, in a type npz stores
            y_is_1d = bool(getattr(final, "y_is_1d_", False))
        # a Pipeline's names are its first step's, those of the raw rows a client passes
        names = getattr(model if leading is not None else final, "feature_names_in_", None)
        program = module.program
        return cls(kind, list(program.input_quantizers), [tuple(r) for r in module.input_ranges],
                   [list(shape) for shape in program.sample_shapes], list(program.outputs), classes, y_is_1d,
                   None if names is None else [str(name) for name in names], leading)

    @property
    def n_inputs(self) -> int:
        return len(self.input_quantizers)

    def prepare(self, X: Any) -> Any:
        """The rows a client passes as the network takes them: columns checked, preprocessing applied."""
        if self.feature_names is not None:
            X = preprocessing.checked_frame(X, self.feature_names)
        if self.preprocessing is not None:
            expected = getattr(self.preprocessing, "n_features_in_", None)
            if expected is not None and np.ndim(X) == 2 and np.shape(X)[1] != expected:
                raise ValueError(f"input 0 has shape {np.shape(X)}; expected (n_samples, {expected})")
            if hasattr(X, "columns") and not hasattr(self.preprocessing, "feature_names_in_"):
                X = X.to_numpy()  # fitted on an array (the estimator's own bins or scaler): no column names to check
            X = self.preprocessing.transform(X)
            X = X.toarray() if hasattr(X, "toarray") else X  # a one-hot encoder's sparse output
        elif hasattr(X, "columns"):
            X = X.to_numpy()
        return X

    def quantize(self, *X) -> tuple[np.ndarray, ...]:
        """Checked, preprocessed, quantized and clipped inputs, exactly as ``predict`` makes them."""
        if len(X) == 1:
            X = (self.prepare(X[0]),)
        elif self.feature_names is not None or self.preprocessing is not None:
            raise ValueError(f"this model takes one table of rows, got {len(X)} inputs")
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
        if self.feature_names is not None:
            description["feature_names"] = list(self.feature_names)
        tree, arrays = encoding.dumps(description)
        members = {"model.json": tree, "model.npz": arrays}
        if self.preprocessing is not None:
            members[preprocessing.MEMBER] = preprocessing.dumps(self.preprocessing)
        return members

    @classmethod
    def from_bytes(cls, members: dict[str, bytes]) -> "ClientModel":
        description = encoding.loads(members["model.json"], members["model.npz"])
        unexpected = set(description) - {f.name for f in fields(cls) if f.init and f.name != "preprocessing"}
        if unexpected:
            raise PayloadError(f"the client artefact describes fields save never writes: {sorted(unexpected)[:5]}")
        if preprocessing.MEMBER in members:
            description["preprocessing"] = preprocessing.loads(members[preprocessing.MEMBER])
        return cls(**description)


def _quantized_module(model: Any) -> QuantizedModule:
    """The compiled module of an estimator or the module itself, with a clear error otherwise."""
    module = getattr(model, "quantized_module_", model)
    if not isinstance(module, QuantizedModule):
        if type(model).__module__.startswith("fheestimators.") and hasattr(model, "fit"):
            raise ValueError(f"this {type(model).__name__} is not fitted: call fit before saving it")
        raise TypeError(f"save takes a fitted NeuralNetClassifier/NeuralNetRegressor or a QuantizedModule, or a "
                        f"fitted Pipeline ending with one; got {type(model).__name__}")
    if module.fhe_circuit is None:
        raise ValueError("the module is not compiled: call compile(inputset) before saving it")
    return module
