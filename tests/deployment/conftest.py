"""Fixtures of the deployment tests: a small classifier, saved, and rows to predict."""
from __future__ import annotations

import numpy as np
import pytest
from deploy_models import SMALL, two_feature_data

from fheestimators import NeuralNetClassifier
from fheestimators.deployment import save


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
