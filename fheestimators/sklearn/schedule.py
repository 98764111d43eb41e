"""Learning-rate schedule for the estimators' training."""
from __future__ import annotations

import math

import torch
from skorch.callbacks import Callback


class OneCycle(Callback):
    """One-cycle learning rate over the whole training: warm up to ``net.lr``, then anneal.

    Low-bit QAT trains faster and ends better with it than with a constant rate; the
    number of steps comes from the data and ``max_epochs``, so no setting is needed.
    """

    def __init__(self, pct_start: float = 0.3):
        self.pct_start = pct_start

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        batches = math.ceil(len(X) / net.batch_size) if net.batch_size > 0 else 1
        self.scheduler_ = torch.optim.lr_scheduler.OneCycleLR(
            net.optimizer_, max_lr=net.lr, total_steps=max(net.max_epochs * batches, 1),
            pct_start=self.pct_start)

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.scheduler_.last_epoch + 1 < self.scheduler_.total_steps:
            self.scheduler_.step()
