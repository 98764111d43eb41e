"""Scorers for model selection: simulated metrics, predicted latency, the latency-budget refit."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fheestimators import (
    NeuralNetClassifier,
    best_within_latency,
    latency_scorer,
    load,
    make_simulate_scorer,
)
from fheestimators.fhe.cost import COST_MODEL_ENV

X, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=0)
# a circuit of a few bits, compiled in a second, whose simulation draws the bootstraps' mistakes
TINY = dict(module__n_hidden=8, module__n_w_bits=2, module__n_a_bits=2, module__n_input_bits=3,
            rounding_threshold_bits=3, max_epochs=5, lr=0.05, random_state=0)


@pytest.fixture(autouse=True)
def no_calibration_file(tmp_path, monkeypatch):
    monkeypatch.setenv(COST_MODEL_ENV, str(tmp_path / "absent.json"))


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(StandardScaler(), NeuralNetClassifier(**TINY)).fit(X, y)


def test_simulate_scorer_is_the_metric_of_the_simulated_predictions(pipe):
    simulated = pipe.predict(X, fhe="simulate")
    assert make_simulate_scorer()(pipe, X, y) == accuracy_score(y, simulated)
    # the bare estimator, another metric with its keyword
    clf, Xt = pipe[-1], pipe[0].transform(X)
    scorer = make_simulate_scorer(f1_score, average="macro")
    assert scorer(clf, Xt, y) == f1_score(y, clf.predict(Xt, fhe="simulate"), average="macro")
    # a loss on probabilities: negated, as scikit-learn maximizes scores
    loss = make_simulate_scorer(log_loss, response="predict_proba", greater_is_better=False)
    assert loss(pipe, X, y) == -log_loss(y, pipe.predict_proba(X, fhe="simulate"))
    assert "log_loss" in repr(loss) and pickle.loads(pickle.dumps(loss))(pipe, X, y) == loss(pipe, X, y)
    with pytest.raises(ValueError, match="response"):
        make_simulate_scorer(response="decision_function")


def test_latency_scorer_is_minus_the_predicted_seconds(pipe):
    seconds = pipe[-1].fhe_cost_.seconds_per_sample
    assert seconds > 0
    assert latency_scorer(pipe, X, y) == latency_scorer(pipe[-1]) == -seconds


def test_fhe_cost_follows_the_circuit_through_pickle_dump_and_clone(pipe, tmp_path):
    clf = pipe[-1]
    cost = clf.fhe_cost_
    assert cost == clf.quantized_module_.cost()
    assert pickle.loads(pickle.dumps(clf)).fhe_cost_ == cost
    clf.dump(tmp_path / "clf.pkl")
    assert load(tmp_path / "clf.pkl").fhe_cost_ == cost
    fresh = clone(clf)
    assert not hasattr(fresh, "fhe_cost_")  # unfitted: NotFittedError is an AttributeError
    with pytest.raises(NotFittedError):
        fresh.fhe_cost_


CV_RESULTS = {
    "params": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}],
    "mean_test_accuracy": np.array([0.90, 0.95, 0.97, 0.95, np.nan]),
    "mean_test_latency": -np.array([0.5, 1.2, 3.0, 0.8, 0.1]),
}


def test_refit_picks_the_best_score_within_the_budget():
    assert best_within_latency(1.0, score="accuracy")(CV_RESULTS) == 3  # 0.95 at 0.8 s; index 1 is 1.2 s
    assert best_within_latency(2.0, score="accuracy")(CV_RESULTS) == 3  # ties at 0.95: the faster
    assert best_within_latency(5.0, score="accuracy")(CV_RESULTS) == 2
    assert best_within_latency(0.6, score="accuracy")(CV_RESULTS) == 0  # index 4 is faster but failed (nan)
    with pytest.raises(ValueError, match=r"no candidate .* within 0.05 s.*\{'n': 5\}.* 0.1 s"):
        best_within_latency(0.05, score="accuracy")(CV_RESULTS)
    with pytest.raises(KeyError, match="mean_test_score"):
        best_within_latency(1.0)(CV_RESULTS)
    with pytest.raises(ValueError, match="positive"):
        best_within_latency(0)
