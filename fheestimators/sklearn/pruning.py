"""Keep at most ``max_non_zero`` weights per neuron, so accumulators stay narrow."""
from __future__ import annotations

from typing import Optional

import torch
from skorch.callbacks import Callback
from torch.nn.utils import prune


def max_non_zero_for(accumulator_bits: int, n_w_bits: int, n_a_bits: int) -> int:
    """The most non-zero weights per neuron whose worst-case sum fits ``accumulator_bits`` (signed)."""
    worst_product = (2 ** (n_w_bits - 1)) * (2**n_a_bits - 1)
    return max((2 ** (accumulator_bits - 1) - 1) // worst_product, 1)


def _row_mask(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """1 for the ``keep`` largest weights of each output row, 0 elsewhere."""
    mask = torch.zeros_like(weight)
    top = weight.abs().topk(min(keep, weight.shape[1]), dim=1).indices
    return mask.scatter_(1, top, 1.0)


class PruneWeights(Callback):
    """Prune each linear layer to ``max_non_zero`` inputs per neuron during training.

    The mask follows the weights: it is recomputed from them at the start of every
    epoch and made permanent at its end.

    Parameters
    ----------
    max_non_zero : int or None
        None reads ``max_non_zero`` from the module (the estimators' ``module__max_non_zero``);
        if that is None too, nothing is pruned.
    """

    def __init__(self, max_non_zero: Optional[int] = None):
        self.max_non_zero = max_non_zero

    def _layers(self, net):
        return [m for m in net.module_.modules() if isinstance(m, torch.nn.Linear)]

    def _limit(self, net) -> Optional[int]:
        return self.max_non_zero if self.max_non_zero is not None else getattr(net.module_, "max_non_zero", None)

    def _apply(self, net) -> None:
        keep = self._limit(net)
        if keep is None:
            return
        for layer in self._layers(net):
            if layer.in_features <= keep:
                continue
            if prune.is_pruned(layer):
                prune.remove(layer, "weight")
            prune.custom_from_mask(layer, "weight", _row_mask(layer.weight.detach(), keep))

    def _bake(self, net) -> None:
        for layer in self._layers(net):
            if prune.is_pruned(layer):
                prune.remove(layer, "weight")

    def on_epoch_begin(self, net, **kwargs):
        self._apply(net)

    def on_epoch_end(self, net, **kwargs):
        # plain weights between epochs, so that callbacks which save and restore the
        # module (EarlyStopping's load_best, Checkpoint) see the same keys throughout
        self._bake(net)

    def on_train_end(self, net, **kwargs):
        self._bake(net)
