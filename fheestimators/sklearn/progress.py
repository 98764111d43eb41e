"""What the estimators print while training."""
from __future__ import annotations

from skorch.callbacks import PrintLog
from tqdm.auto import tqdm

# history keys skorch fills every epoch that say nothing about the model's progress
_QUIET_KEYS = {"epoch", "dur"}


class EpochProgress(PrintLog):
    """A progress bar over the epochs at ``verbose=1``, skorch's per-epoch table above.

    The estimators train for hundreds of short epochs: a table row per epoch scrolls
    away, a bar with the latest losses shows how far training is and how long it will take.
    Takes ``PrintLog``'s parameters, used for the table at ``verbose >= 2``.
    """

    def initialize(self):
        super().initialize()
        self.bar_ = None
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if net.verbose == 1:
            self.bar_ = tqdm(total=net.max_epochs, desc="training", unit="epoch")

    def on_epoch_end(self, net, **kwargs):
        if net.verbose >= 2:
            super().on_epoch_end(net, **kwargs)
        elif self.bar_ is not None:
            scores = {key: value for key, value in net.history[-1].items()
                      if key not in _QUIET_KEYS | self.keys_ignored_ and not key.endswith("_best")
                      and isinstance(value, float)}
            self.bar_.set_postfix({key: f"{value:.4f}" for key, value in scores.items()}, refresh=False)
            self.bar_.update()

    def on_train_end(self, net, X=None, y=None, **kwargs):
        if self.bar_ is not None:
            self.bar_.close()
            self.bar_ = None
