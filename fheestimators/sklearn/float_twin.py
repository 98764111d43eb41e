"""The float twin of the estimators' network: what ``fit_benchmark`` compares against."""
from __future__ import annotations

from typing import Sequence, Type, Union

import numpy as np
import skorch
import torch
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from .batches import WholeBatches
from .input_scaling import ScaledInputs
from .linear_term import fit_linear_term
from .qat_module import layer_widths
from .schedule import OneCycle
from .targets import _ClassLabels, _Targets
from .validation import EarlyStoppingMixin, StopWhenValidationStalls, scoring_the_network

__all__ = ["FloatMLP", "FloatNeuralNetClassifier", "FloatNeuralNetRegressor"]


class FloatMLP(nn.Module):
    """``QATMLP`` without its quantizers: ``(Linear → activation) × … → Linear`` in float.

    The reference network of ``fit_benchmark``: given the same arguments it has the
    layers, widths and activation of ``QATMLP``.

    Parameters
    ----------
    n_inputs, n_outputs : int
        Set from the data.
    n_layers : int
        Number of linear layers (hidden layers + 1).
    n_hidden : int, sequence of int or None
        Width of each hidden layer, or one width per hidden layer; None as in ``QATMLP``.
    activation : type of torch.nn.Module
        The activation after each hidden layer.
    linear_term : bool
        Add a linear term of the inputs to the output, as ``QATMLP``'s (set by the regressor, not trained).
    """

    def __init__(self, n_inputs: int, n_outputs: int, n_layers: int,
                 n_hidden: Union[int, Sequence[int], None], activation: Type[nn.Module], linear_term: bool = False):
        super().__init__()
        widths = layer_widths(n_inputs, n_outputs, n_layers, n_hidden)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(activation())
            layers.append(nn.Linear(fan_in, fan_out))
        self.layers = nn.Sequential(*layers)
        self.linear_term_layer = None
        if linear_term:
            self.linear_term_layer = nn.Linear(n_inputs, n_outputs, bias=False)
            nn.init.zeros_(self.linear_term_layer.weight)
            self.linear_term_layer.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out if self.linear_term_layer is None else out + self.linear_term_layer(x)

    @property
    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]


class _FloatTwin(WholeBatches, ScaledInputs, EarlyStoppingMixin):
    """What both twins share: the FHE estimators' data handling (``scale_inputs`` included)
    and learning-rate schedule, so that only quantization differs."""

    def __init__(self, *args, scale_inputs: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale_inputs = scale_inputs

    def get_default_callbacks(self):
        defaults = scoring_the_network(super().get_default_callbacks())
        return [*defaults, ("one_cycle", OneCycle()), ("early_stopping", StopWhenValidationStalls())]

    def fit(self, X, y, **fit_params):
        """Train the float network on ``(X, y)``; returns ``self``."""
        return super().fit(*self._training_rows(X, y), **fit_params)

    def _training_rows(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` checked, the scaler fitted and applied, early stopping set for them: as a fresh fit sees them."""
        X, y = self._training_data(X, y, reset=True)
        self.input_scaler_ = self._fit_input_scaler(X)
        self._resolve_early_stopping(len(X), fresh=True)
        return self._scaled(X), y


class FloatNeuralNetClassifier(_FloatTwin, _ClassLabels, skorch.NeuralNetClassifier):
    """skorch's classifier, taking data as ours does: any labels, float64 or pandas ``X``.

    ``fit_benchmark`` trains one on a ``FloatMLP``: the accuracy of the network
    without quantization, pruning or FHE.
    """

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, in the order of ``classes_``."""
        check_is_fitted(self)
        return super().predict_proba(self._scaled(validate_data(self, X, reset=False, dtype=np.float32)))

    def predict(self, X) -> np.ndarray:
        """Predicted labels."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class FloatNeuralNetRegressor(_FloatTwin, _Targets, skorch.NeuralNetRegressor):
    """skorch's regressor, taking data as ours does (1-D ``y``, float64 or pandas ``X``).

    ``fit_benchmark`` trains one on a ``FloatMLP``: the score of the network
    without quantization, pruning or FHE. A ``FloatMLP`` with ``linear_term`` gets it
    by ridge regression, as ``NeuralNetRegressor``'s network does.
    """

    def fit(self, X, y, **fit_params):
        """Train the float network on ``(X, y)``, its linear term first; returns ``self``."""
        X, y = self._training_rows(X, y)
        if not self.warm_start or not self.initialized_:  # as skorch's fit
            self.initialize()
            fit_linear_term(self.module_, X, y)
        return self.partial_fit(X, y, **fit_params)

    def predict(self, X) -> np.ndarray:
        """Predicted values, shaped like the ``y`` of ``fit``."""
        check_is_fitted(self)
        values = super().predict(self._scaled(validate_data(self, X, reset=False, dtype=np.float32)))
        return self._shaped(self._target_units(values))
