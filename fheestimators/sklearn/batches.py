"""Whole-batch data loading and mode switching for skorch's training loop.

The estimators' networks are tiny, so skorch's per-step Python overhead is a large part of
training: torch's ``DataLoader`` fetches each row of a batch alone and stacks them, and
skorch switches every one of a Brevitas network's modules to training mode before every
step. Both are done here once per batch or once per change, with the same rows, in the same
order, from the same random draws: training gives the same weights, sooner.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from scipy import sparse
from skorch.dataset import Dataset
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler, Subset

# settings of a DataLoader that act on single rows: with any of them, rows are fetched one by one
_PER_ROW_SETTINGS = ("collate_fn", "sampler", "batch_sampler")


class _IndexBatches(Sampler):
    """A ``BatchSampler``'s batches as integer arrays, which skorch indexes without a loop per row;
    ``rows`` maps them to the rows of a ``Subset``'s dataset (a validation split's)."""

    def __init__(self, batches: BatchSampler, rows: Optional[np.ndarray] = None):
        self.batches = batches
        self.rows = rows

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches:
            batch = np.asarray(batch, dtype=np.int64)
            yield batch if self.rows is None else self.rows[batch]

    def __len__(self) -> int:
        return len(self.batches)


def _fetches_whole_batches(iterator, dataset, kwargs: dict) -> bool:
    """Whether a batch can be read with one indexing: torch's own loader on skorch's dense dataset
    (or on a ``Subset`` of it, as skorch's ``ValidSplit`` makes)."""
    if isinstance(dataset, Subset):
        dataset = dataset.dataset
    return (iterator is DataLoader and type(dataset) is Dataset and not sparse.issparse(dataset.X)
            and not any(name in kwargs for name in _PER_ROW_SETTINGS) and kwargs["batch_size"] > 0)


class WholeBatches:
    """Mixin for a skorch net: read each batch with one indexing, switch modes only when they change."""

    def get_iterator(self, dataset, training=False):
        iterator = self.iterator_train if training else self.iterator_valid
        kwargs = self.get_params_for("iterator_train" if training else "iterator_valid")
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        if not _fetches_whole_batches(iterator, dataset, kwargs):
            return super().get_iterator(dataset, training=training)
        # the DataLoader would build the same samplers: the rows and random draws are its own
        shuffle = kwargs.pop("shuffle", False)
        order = RandomSampler(dataset, generator=kwargs.get("generator")) if shuffle else SequentialSampler(dataset)
        batches = BatchSampler(order, kwargs.pop("batch_size"), kwargs.pop("drop_last", False))
        rows = None
        if isinstance(dataset, Subset):
            dataset, rows = dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)
        return DataLoader(dataset, batch_size=None, sampler=_IndexBatches(batches, rows), **kwargs)

    def _set_training(self, training=True):
        # skorch sets the mode of every submodule before every step; a Brevitas network has
        # hundreds, and during an epoch their mode does not change
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, torch.nn.Module) and any(m.training != training for m in module.modules()):
                module.train(training)
