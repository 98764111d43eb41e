"""Fixtures of the deployment tests: a small classifier, saved, and rows to predict."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from deploy_models import SMALL, two_feature_data

from fheestimators import NeuralNetClassifier
from fheestimators.deployment import Client, save


@pytest.fixture(scope="session")
def classifier():
    """A fitted classifier with string labels."""
    X, y = two_feature_data()
    return NeuralNetClassifier(**SMALL).fit(X, y)


@pytest.fixture(scope="session")
def saved_classifier(classifier, tmp_path_factory):
    """The classifier saved with ``save``: a folder with client.zip and server.zip."""
    return save(classifier, tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def rows():
    """Test rows, two of them far outside the training range.

    Not (1e6, -1e6): clipped to the input range, that corner drives one of this model's
    accumulators beyond its compiled range, where FHE wraps around (``simulate`` models it,
    ``disable`` does not).
    """
    X, _ = two_feature_data(6, seed=1)
    return np.vstack([X, [[-5.0, 5.0], [-1e6, -1e6]]]).astype(np.float32)


@pytest.fixture(scope="session")
def foreign(tmp_path_factory):
    """Another model (3 features, 3 neurons): its folder, evaluation keys and a ciphertext.

    ``p_error=0.3`` keeps its keys smaller than the service's body limit for ours, so that
    they reach the model checks instead of being refused for their size.
    """
    rng = np.random.default_rng(0)
    X = rng.random((200, 3)).astype(np.float32)
    model = NeuralNetClassifier(**{**SMALL, "module__n_hidden": 3, "p_error": 0.3}).fit(
        X, np.where(X.sum(axis=1) > 1.5, "high", "low"))
    folder = save(model, tmp_path_factory.mktemp("foreign"))
    client = Client(folder)
    return SimpleNamespace(folder=folder, keys=client.evaluation_keys(), payload=client.encrypt(X[:1]))
