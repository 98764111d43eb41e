"""Training runs on one torch thread and gives torch's setting back."""
import numpy as np
import torch
from skorch.callbacks import Callback
from sklearn.datasets import make_classification

from fheestimators import NeuralNetClassifier


class RecordThreads(Callback):
    def initialize(self):
        self.seen = set()
        return self

    def on_batch_begin(self, net, **kwargs):
        self.seen.add(torch.get_num_threads())


def test_training_uses_one_thread_and_restores_the_setting():
    X, y = make_classification(n_samples=40, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        recorder = RecordThreads()
        NeuralNetClassifier(module__n_layers=1, max_epochs=2,
                            callbacks=[("threads", recorder)]).fit(X.astype(np.float32), y)
        assert recorder.seen == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
