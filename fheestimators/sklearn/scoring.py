"""Scorers and a ``refit`` rule for model selection that counts what FHE changes and costs.

- ``make_simulate_scorer(metric)``: ``metric(y, predict(X, fhe="simulate"))``, which
  sees the bootstraps' mistakes that ``score`` (``fhe="disable"``) does not.
- ``latency_scorer``: minus the predicted seconds per encrypted sample (higher is better).
- ``best_within_latency(budget)``: a ``refit`` callable for multi-metric searches, the
  best-scoring candidate whose predicted latency fits the budget.

All work on the estimators and on a ``Pipeline`` whose last step is one of them.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline

__all__ = ["best_within_latency", "latency_scorer", "make_simulate_scorer"]


def _final_step(estimator, X):
    """The FHE estimator and the data as it sees it: a pipeline's earlier steps run in the clear."""
    if isinstance(estimator, Pipeline):
        return estimator[-1], (estimator[:-1].transform(X) if len(estimator) > 1 else X)
    return estimator, X


class SimulateScorer:
    """``sign × metric(y, estimator.<response>(X, fhe="simulate"), **kwargs)``; see ``make_simulate_scorer``."""

    def __init__(self, metric: Callable, response: str = "predict", greater_is_better: bool = True, **kwargs):
        if response not in ("predict", "predict_proba"):
            raise ValueError(f"response={response!r}: use 'predict' or 'predict_proba'")
        self.metric, self.response, self.kwargs = metric, response, kwargs
        self.sign = 1 if greater_is_better else -1

    def __call__(self, estimator, X, y, sample_weight=None) -> float:
        final, Xt = _final_step(estimator, X)
        predictions = getattr(final, self.response)(Xt, fhe="simulate")
        kwargs = dict(self.kwargs, **({} if sample_weight is None else {"sample_weight": sample_weight}))
        return self.sign * float(self.metric(y, predictions, **kwargs))

    def __repr__(self) -> str:
        name = getattr(self.metric, "__name__", repr(self.metric))
        flag = ", greater_is_better=False" if self.sign < 0 else ""
        return f"make_simulate_scorer({name}, response={self.response!r}{flag})"


def make_simulate_scorer(metric: Callable = accuracy_score, *, response: str = "predict",
                         greater_is_better: bool = True, **kwargs) -> SimulateScorer:
    """A scorer for ``GridSearchCV(scoring=...)`` that predicts with ``fhe="simulate"``.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_pred, **kwargs)``, e.g. ``sklearn.metrics.f1_score``; default accuracy.
    response : "predict" or "predict_proba"
        What the metric reads (``predict_proba`` for ``log_loss``, ``roc_auc_score``...).
    greater_is_better : bool
        False for losses: the scorer returns their negative, as scikit-learn expects.
    **kwargs
        Passed to ``metric`` (e.g. ``average="macro"``).
    """
    return SimulateScorer(metric, response=response, greater_is_better=greater_is_better, **kwargs)


def latency_scorer(estimator, X=None, y=None) -> float:
    """Minus the predicted seconds per encrypted sample (``fhe_cost_``): higher is faster.

    ``X`` and ``y`` are unused: the cost depends on the compiled circuit only.
    """
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    return -float(final.fhe_cost_.seconds_per_sample)


class BestWithinLatency:
    """``refit`` rule: the index of the best ``score`` among candidates within ``budget_seconds``."""

    def __init__(self, budget_seconds: float, score: str = "score", latency: str = "latency"):
        if not budget_seconds > 0:
            raise ValueError(f"budget_seconds={budget_seconds!r} must be positive")
        self.budget_seconds, self.score, self.latency = float(budget_seconds), score, latency

    def __call__(self, cv_results: Mapping) -> int:
        for name in (self.score, self.latency):
            if f"mean_test_{name}" not in cv_results:
                raise KeyError(f"cv_results_ has no mean_test_{name}: give scoring={{{self.score!r}: ..., "
                               f"{self.latency!r}: latency_scorer}}")
        scores = np.asarray(cv_results[f"mean_test_{self.score}"], dtype=float)
        seconds = -np.asarray(cv_results[f"mean_test_{self.latency}"], dtype=float)
        fits = np.isfinite(scores) & (seconds <= self.budget_seconds)
        if not fits.any():
            fastest = int(np.nanargmin(seconds))
            raise ValueError(
                f"no candidate is predicted within {self.budget_seconds:g} s per encrypted sample; the "
                f"fastest, {cv_results['params'][fastest]}, is predicted at {seconds[fastest]:.3g} s: "
                "raise the budget or search smaller networks or fewer rounding bits")
        # among the best scores, the fastest
        best = np.flatnonzero(fits & (scores == scores[fits].max()))
        return int(best[np.argmin(seconds[best])])

    def __repr__(self) -> str:
        return f"best_within_latency({self.budget_seconds:g}, score={self.score!r}, latency={self.latency!r})"


def best_within_latency(budget_seconds: float, score: str = "score", latency: str = "latency") -> BestWithinLatency:
    """A ``refit`` callable: the most accurate candidate whose predicted latency fits a budget.

    For a multi-metric search, ``scoring={score: ..., latency: latency_scorer}``; it
    picks, among candidates whose mean predicted seconds per encrypted sample are at most
    ``budget_seconds``, the highest ``mean_test_<score>`` (ties: the fastest), and raises a
    ``ValueError`` naming the fastest candidate if none fits.
    """
    return BestWithinLatency(budget_seconds, score=score, latency=latency)
