"""Validation during training: the held-out split, its accuracy, and early stopping on small data.

On a few hundred rows, the estimators' 300 epochs overfit; holding out a validation
split and keeping the epoch that scored best on it stops before they do.
"""
from __future__ import annotations

from typing import Union

import numpy as np
from sklearn.base import is_classifier
from skorch.callbacks import EarlyStopping, EpochScoring
from skorch.dataset import ValidSplit

# "auto" stops early on fewer rows than this: larger sets gain from the full schedule
SMALL_DATA = 1000
# epochs without a better validation loss before stopping: the one-cycle warm-up takes
# 90 of the 300 epochs, and a shorter patience stops some networks before it ends
PATIENCE = 50


def network_accuracy(net, X, y) -> float:
    """Accuracy of the torch network being trained.

    The estimators' ``predict`` runs the compiled circuit, which ``fit`` builds only once
    training ends; validation scores the network itself. ``y`` holds class indices.
    """
    indices = net.forward(X, training=False).argmax(dim=1).cpu().numpy()
    return float(np.mean(indices == np.asarray(y).ravel()))


def scoring_the_network(callbacks: list) -> list:
    """skorch's default callbacks, with the classifier's ``valid_acc`` scored by ``network_accuracy``."""
    scoring = EpochScoring(network_accuracy, name="valid_acc", lower_is_better=False)
    return [(name, scoring if name == "valid_acc" else callback) for name, callback in callbacks]


class StopWhenValidationStalls(EarlyStopping):
    """skorch's ``EarlyStopping`` restoring the best epoch, active when the net stops early.

    The estimators list it among their callbacks (``callbacks__early_stopping__patience``
    and the others of ``EarlyStopping`` apply); it does nothing in a fit whose
    ``early_stopping_`` is False.
    """

    def __init__(self, monitor: str = "valid_loss", patience: int = PATIENCE, threshold: float = 1e-4,
                 threshold_mode: str = "rel", lower_is_better: bool = True, load_best: bool = True, sink=print):
        super().__init__(monitor=monitor, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
                         lower_is_better=lower_is_better, sink=sink, load_best=load_best)

    def on_train_begin(self, net, **kwargs):
        self.active_ = bool(getattr(net, "early_stopping_", False))
        if self.active_:
            super().on_train_begin(net, **kwargs)

    def on_epoch_end(self, net, **kwargs):
        if self.active_:
            super().on_epoch_end(net, **kwargs)

    def on_train_end(self, net, **kwargs):
        if self.active_:
            super().on_train_end(net, **kwargs)


class EarlyStoppingMixin:
    """``early_stopping`` and ``validation_fraction``, as in scikit-learn's MLP estimators.

    Parameters
    ----------
    early_stopping : "auto" or bool, default="auto"
        Hold out ``validation_fraction`` of the rows (unless ``train_split`` gives a
        validation set), stop when the validation loss has not improved for
        ``callbacks__early_stopping__patience`` epochs (50), and keep the best epoch's
        weights. "auto" does so in ``fit`` on fewer than 1000 rows.
    validation_fraction : float, default=0.2
        The share of the rows held out (stratified for a classifier).
    """

    def __init__(self, *args, early_stopping: Union[str, bool] = "auto", validation_fraction: float = 0.2,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction

    def _resolve_early_stopping(self, n_samples: int, fresh: bool) -> None:
        """Set ``early_stopping_`` for this fit: "auto" stops early in a fresh fit on small data."""
        if isinstance(self.early_stopping, str) and self.early_stopping == "auto":
            self.early_stopping_ = fresh and n_samples < SMALL_DATA
        elif isinstance(self.early_stopping, (bool, np.bool_)):
            self.early_stopping_ = bool(self.early_stopping)
        else:
            raise ValueError(f"early_stopping={self.early_stopping!r}: give 'auto', True or False")
        if self.early_stopping_ and not self.train_split and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction!r} must be between 0 and 1")

    def get_split_datasets(self, X, y=None, **fit_params):
        if not getattr(self, "early_stopping_", False) or self.train_split:
            return super().get_split_datasets(X, y, **fit_params)
        seed = getattr(self, "random_state", None)  # the float twin has none
        seed = seed if isinstance(seed, (int, np.integer)) else 0
        labels = np.asarray(y).ravel()
        # stratifying needs two rows of every class
        stratified = is_classifier(self) and np.unique(labels, return_counts=True)[1].min() >= 2
        split = ValidSplit(self.validation_fraction, stratified=bool(stratified), random_state=int(seed))
        return split(self.get_dataset(X, y), y, **fit_params)
