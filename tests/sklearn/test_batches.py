"""Whole-batch loading and mode switching in training: same weights as skorch's own loop, fewer calls."""
import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from sklearn.datasets import make_classification
from torch.utils.data import default_collate

from fheestimators import NeuralNetClassifier, NeuralNetRegressor

SMALL = dict(module__n_layers=2, module__n_hidden=4, module__n_input_bits=3, module__n_w_bits=3,
             module__n_a_bits=3, max_epochs=3, batch_size=16, random_state=0)
# a DataLoader setting that acts on single rows: skorch's loop as it is, one fetch per row
PER_ROW = {"iterator_train__collate_fn": default_collate, "iterator_valid__collate_fn": default_collate}


@pytest.fixture
def fetches(monkeypatch):
    """The number of times skorch's dataset is indexed."""
    calls = []
    original = Dataset.__getitem__
    monkeypatch.setattr(Dataset, "__getitem__", lambda self, i: calls.append(i) or original(self, i))
    return calls


def _parameters(model) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.module_.parameters()]).numpy()


@pytest.mark.parametrize("estimator, early_stopping", [(NeuralNetClassifier, False), (NeuralNetClassifier, True),
                                                       (NeuralNetRegressor, False)])
def test_whole_batches_train_the_same_weights_with_one_fetch_per_batch(estimator, early_stopping, fetches):
    X, y = make_classification(n_samples=100, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    X = X.astype(np.float32)
    if estimator is NeuralNetRegressor:
        y = (X @ np.array([1.0, -2.0, 0.5], dtype=np.float32))[:, None]
    settings = dict(SMALL, early_stopping=early_stopping)

    batched = estimator(**settings).fit(X, y)
    batched_fetches = len(fetches)
    fetches.clear()
    per_row = estimator(**settings, **PER_ROW).fit(X, y)

    np.testing.assert_array_equal(_parameters(batched), _parameters(per_row))
    losses = ["train_loss", "valid_loss"] if early_stopping else ["train_loss"]
    assert batched.history[:, losses] == per_row.history[:, losses]
    # 3 epochs of 100 rows (80 trained on and 20 held out, with early stopping) in batches of 16
    batches = 3 * (5 + 2) if early_stopping else 3 * 7
    assert len(fetches) >= 3 * 100
    assert batched_fetches == batches, batched_fetches


class EvalOneLayer(Callback):
    """Puts one submodule in evaluation mode before each epoch and records the modes seen in training steps."""

    def initialize(self):
        self.modes = []
        return self

    def on_epoch_begin(self, net, **kwargs):
        net.module_.layers[1].eval()

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.modes.append({m.training for m in net.module_.modules()})


def test_every_submodule_trains_even_when_only_one_was_switched_off():
    X, y = make_classification(n_samples=48, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    recorder = EvalOneLayer()
    NeuralNetClassifier(**SMALL, callbacks=[("eval_one", recorder)]).fit(X.astype(np.float32), y)
    assert len(recorder.modes) == 3 * 3
    assert all(modes == {True} for modes in recorder.modes)
