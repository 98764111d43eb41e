"""The one-cycle learning rate of the estimators' training."""
import numpy as np
from skorch.callbacks import Callback
from sklearn.datasets import make_classification

from fheestimators import NeuralNetClassifier


class RecordLR(Callback):
    def initialize(self):
        self.rates = []
        return self

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rates.append(net.optimizer_.param_groups[0]["lr"])


def test_one_cycle_warms_up_to_lr_then_anneals():
    X, y = make_classification(n_samples=64, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    recorder = RecordLR()
    clf = NeuralNetClassifier(module__n_layers=1, max_epochs=10, batch_size=16, lr=0.05,
                              callbacks=[("record", recorder)], random_state=0)
    clf.fit(X.astype(np.float32), y)
    rates = np.array(recorder.rates)
    assert len(rates) == 10 * 4
    peak = int(rates.argmax())
    assert 0 < peak < len(rates) - 1
    assert np.isclose(rates.max(), 0.05, rtol=0.05)
    assert rates[0] < 0.05 / 10 and rates[-1] < 0.05 / 100
    assert np.all(np.diff(rates[: peak + 1]) >= 0) and np.all(np.diff(rates[peak:]) <= 0)


def test_one_cycle_can_be_turned_off():
    X, y = make_classification(n_samples=32, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    recorder = RecordLR()
    clf = NeuralNetClassifier(module__n_layers=1, max_epochs=3, batch_size=16, lr=0.05,
                              callbacks=[("record", recorder)], callbacks__one_cycle=None)
    clf.fit(X.astype(np.float32), y)
    assert np.allclose(recorder.rates, 0.05)
