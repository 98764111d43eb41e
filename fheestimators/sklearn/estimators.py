"""``NeuralNetClassifier`` and ``NeuralNetRegressor``: skorch estimators that predict in FHE."""
from __future__ import annotations

from typing import Optional

import numpy as np
import skorch
import torch
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_array

from ..torch.compile import compile_brevitas_qat_model
from .pruning import PruneWeights
from .qat_module import QATMLP

__all__ = ["NeuralNetClassifier", "NeuralNetRegressor"]

DEFAULT_ROUNDING = {"n_bits": 6, "method": "approximate"}
MAX_COMPILE_SAMPLES = 2000


class FheMixin:
    """Compile after training and dispatch ``predict`` to the clear, simulated or encrypted model.

    Holds the settings both estimators share; each sets its own default ``criterion``.
    """

    def __init__(
        self,
        module=QATMLP,
        *args,
        criterion,
        optimizer=torch.optim.Adam,
        lr=0.01,
        max_epochs=150,
        batch_size=256,
        train_split=None,
        verbose=0,
        rounding_threshold_bits=DEFAULT_ROUNDING,
        p_error=None,
        global_p_error=None,
        **kwargs,
    ):
        super().__init__(module, *args, criterion=criterion, optimizer=optimizer, lr=lr,
                         max_epochs=max_epochs, batch_size=batch_size, train_split=train_split,
                         verbose=verbose, **kwargs)
        self.rounding_threshold_bits = rounding_threshold_bits
        self.p_error = p_error
        self.global_p_error = global_p_error
        # skorch's ``compile`` (torch.compile) flag would hide our ``compile`` method
        vars(self).pop("compile", None)

    def _check_X(self, X, reset: bool) -> np.ndarray:
        if hasattr(X, "to_numpy"):
            X = X.to_numpy()
        X = check_array(X, dtype=None, ensure_all_finite=True)
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        # float32 is what the torch module trains on; float64 input is cast, not rejected
        X = X.astype(np.float32)
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} was fitted with {self.n_features_in_}")
        return X

    def get_params_for(self, prefix):
        params = super().get_params_for(prefix)
        if prefix == "module" and self.module is QATMLP:
            params.setdefault("n_inputs", self.n_features_in_)
            params.setdefault("n_outputs", self.n_outputs_)
        return params

    def torch_compile(self, module, name):
        """torch.compile is not used: ``compile`` here means compiling to FHE."""
        return module

    def get_default_callbacks(self):
        return [*super().get_default_callbacks(), ("prune", PruneWeights())]

    def compile(self, X, configuration=None, p_error: Optional[float] = None,
                global_p_error: Optional[float] = None, rounding_threshold_bits="default", verbose: bool = False):
        """(Re)compile the trained network to FHE with ``X`` as inputset."""
        check_is_fitted(self, "module_")
        X = self._check_X(X, reset=False)
        rounding = self.rounding_threshold_bits if rounding_threshold_bits == "default" else rounding_threshold_bits
        self.module_.eval()
        # a bounded inputset, kept so that unpickling can rebuild the same circuit
        self.compile_inputset_ = X[:MAX_COMPILE_SAMPLES]
        self.quantized_module_ = compile_brevitas_qat_model(
            self.module_, self.compile_inputset_, rounding_threshold_bits=rounding, configuration=configuration,
            p_error=p_error if p_error is not None else self.p_error,
            global_p_error=global_p_error if global_p_error is not None else self.global_p_error,
            verbose=verbose,
        )
        return self

    @property
    def fhe_circuit(self):
        check_is_fitted(self, "quantized_module_")
        return self.quantized_module_.fhe_circuit

    def _fhe_forward(self, X, fhe: str) -> np.ndarray:
        check_is_fitted(self, "quantized_module_")
        X = self._check_X(X, reset=False)
        return self.quantized_module_.forward(X, fhe=fhe, progress=self.verbose > 0 and fhe == "execute")

    def __getstate__(self):
        # Brevitas modules do not pickle (their quantizers are injector classes) and a
        # circuit holds native objects: keep the weights, rebuild both when loading.
        saved = {k: self.__dict__.pop(k) for k in ("module_", "optimizer_", "quantized_module_") if k in self.__dict__}
        try:
            state = super().__getstate__()
        finally:
            self.__dict__.update(saved)
        state["_fhe_module_state_"] = saved["module_"].state_dict() if "module_" in saved else None
        state["_fhe_recompile_"] = "quantized_module_" in saved
        return state

    def __setstate__(self, state):
        module_state = state.pop("_fhe_module_state_", None)
        recompile = state.pop("_fhe_recompile_", False)
        super().__setstate__(state)
        if module_state is not None:
            self.initialize_module()
            self.module_.load_state_dict(module_state)
            self.initialize_optimizer()
        if recompile:
            self.compile(self.compile_inputset_)


class NeuralNetClassifier(FheMixin, skorch.NeuralNetClassifier):
    """A QAT neural network classifier that predicts on encrypted data.

    Parameters
    ----------
    module : type of torch.nn.Module
        Default ``QATMLP``; set its options with ``module__n_hidden=...``,
        ``module__n_layers``, ``module__activation``, ``module__n_w_bits``,
        ``module__n_a_bits``, ``module__max_non_zero`` / ``module__n_accum_bits``.
    rounding_threshold_bits, p_error, global_p_error :
        Compilation settings used by ``fit`` and ``compile``.
    **kwargs :
        skorch's own (``lr``, ``max_epochs``, ``batch_size``, ``optimizer``,
        ``callbacks``, ``train_split``, ``verbose``, ``device``, ...).

    Examples
    --------
    >>> clf = NeuralNetClassifier(max_epochs=5).fit(X, y)      # doctest: +SKIP
    >>> clf.predict(X[:2], fhe="execute")                       # doctest: +SKIP
    """

    def __init__(self, module=QATMLP, *args, criterion=torch.nn.CrossEntropyLoss, **kwargs):
        super().__init__(module, *args, criterion=criterion, **kwargs)

    def fit(self, X, y, **fit_params):
        """Train with QAT (and pruning), then compile on ``X``."""
        X = self._check_X(X, reset=True)
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
        if y.ndim != 1:
            y = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
        check_classification_targets(y)
        self.label_encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.label_encoder_.classes_
        self.n_outputs_ = len(self.classes_)
        super().fit(X, self.label_encoder_.transform(y).astype(np.int64), **fit_params)
        self.compile(X)
        return self

    @property
    def classes_(self):
        """The labels seen in ``fit`` (any type), in the order of the output units."""
        try:
            return self.__dict__["classes_"]
        except KeyError:
            raise AttributeError("classes_ is set by fit") from None

    @classes_.setter
    def classes_(self, value):
        self.__dict__["classes_"] = value

    def predict_proba(self, X, fhe: str = "disable") -> np.ndarray:
        """Class probabilities (softmax of the dequantized logits, computed in the clear)."""
        logits = self._fhe_forward(X, fhe)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        """Predicted labels; ``fhe`` is "disable", "simulate" or "execute"."""
        indices = self._fhe_forward(X, fhe).argmax(axis=1)
        return self.classes_[indices]


class NeuralNetRegressor(FheMixin, skorch.NeuralNetRegressor):
    """A QAT neural network regressor that predicts on encrypted data; see ``NeuralNetClassifier``."""

    def __init__(self, module=QATMLP, *args, criterion=torch.nn.MSELoss, **kwargs):
        super().__init__(module, *args, criterion=criterion, **kwargs)

    def fit(self, X, y, **fit_params):
        """Train with QAT (and pruning), then compile on ``X``."""
        X = self._check_X(X, reset=True)
        y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float32)
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or inf")
        self.y_is_1d_ = y.ndim == 1
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = y2.shape[1]
        super().fit(X, y2, **fit_params)
        self.compile(X)
        return self

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        """Predicted values; ``fhe`` is "disable", "simulate" or "execute"."""
        out = self._fhe_forward(X, fhe)
        return out.ravel() if self.y_is_1d_ else out
