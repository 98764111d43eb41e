"""How the estimators read ``y``: labels of any type for classifiers, float columns for regressors.

Shared by the FHE estimators and their float twins, so both take the same data.
"""
from __future__ import annotations

import numpy as np
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data


class _ClassLabels:
    """Labels of any type in ``fit``, their indices for torch, the same labels out of ``predict``."""

    def _training_data(self, X, y, reset: bool, classes=None) -> tuple[np.ndarray, np.ndarray]:
        # float32 is what the torch module trains on; other numeric dtypes are cast, not rejected
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        if reset:
            known = next((labels for labels in (classes, self.classes) if labels is not None), y)
            self.label_encoder_ = LabelEncoder().fit(known)
            self.n_outputs_ = len(self.label_encoder_.classes_)
        unknown = set(np.unique(y).tolist()) - set(self.classes_.tolist())
        if unknown:
            raise ValueError(
                f"y has labels {sorted(unknown, key=str)} that are not in classes_ {self.classes_.tolist()}: "
                "give every label when training starts (partial_fit's classes= or the classes parameter)"
            )
        return X, self.label_encoder_.transform(y).astype(np.int64)

    @property
    def classes_(self) -> np.ndarray:
        """The labels seen in ``fit`` (or given as ``classes``), in the order of the output units."""
        try:
            return self.label_encoder_.classes_
        except AttributeError:
            raise AttributeError("classes_ is set by fit") from None


class _Targets:
    """Float targets, one column per output unit; a 1-D ``y`` gives 1-D predictions.

    With ``normalize_y`` (the default), the network learns each target column scaled to
    mean 0 and variance 1, and predictions are mapped back: on raw targets such as prices
    or counts, Adam's small steps spend most of the training reaching the targets' mean.
    """

    def __init__(self, *args, normalize_y: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.normalize_y = normalize_y

    def _training_data(self, X, y, reset: bool, classes=None) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32, multi_output=True, y_numeric=True)
        targets = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        if reset:
            self.y_is_1d_ = y.ndim == 1
            self.n_outputs_ = targets.shape[1]
            mean, scale = np.zeros(self.n_outputs_), np.ones(self.n_outputs_)
            if self.normalize_y:
                mean, scale = targets.mean(axis=0, dtype=np.float64), targets.std(axis=0, dtype=np.float64)
                scale[scale == 0] = 1.0  # a constant column: nothing to scale
            self.target_mean_, self.target_scale_ = mean, scale
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {targets.shape[1]} target(s), but {type(self).__name__} was fitted with "
                f"{self.n_outputs_}: call fit, not partial_fit, to learn other targets"
            )
        return X, ((targets - self.target_mean_) / self.target_scale_).astype(np.float32)

    def _target_units(self, values: np.ndarray) -> np.ndarray:
        """The network's outputs in the units of ``y``."""
        return values * self.target_scale_ + self.target_mean_

    def _shaped(self, predictions: np.ndarray) -> np.ndarray:
        return predictions.ravel() if self.y_is_1d_ else predictions
