"""The estimators' defaults on small tabular data, against a linear model and the previous defaults.

scikit-learn's small data sets (diabetes, iris, wine, breast_cancer, and friedman1:
500 synthetic rows with a nonlinear target), each on 5 random 25% test splits
(stratified for classes), behind a ``StandardScaler``. For every split: ``RidgeCV`` or
``LogisticRegressionCV``; our estimator with today's defaults (early stopping below
1000 rows, targets normalized); and with the previous ones (``early_stopping=False,
normalize_y=False``: 300 epochs on ``y`` as given). Scores are R² or accuracy, of
``fhe="simulate"`` (the encrypted model's) and of ``fhe="disable"``.

Run: ``python benchmarks/small_data.py > results.json`` (about 15 minutes on 2 cores).
"""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _measure import log, machine
from fheestimators import NeuralNetClassifier, NeuralNetRegressor

SPLITS = 5
PREVIOUS = dict(early_stopping=False)
PREVIOUS_REGRESSOR = dict(PREVIOUS, normalize_y=False)


def load(name: str):
    if name == "friedman1":
        X, y = datasets.make_friedman1(n_samples=500, noise=1.0, random_state=0)
        return X, y, True
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X, y, name == "diabetes"


def run(name: str) -> dict:
    X, y, regression = load(name)
    metric = r2_score if regression else accuracy_score
    estimator = NeuralNetRegressor if regression else NeuralNetClassifier
    models = {
        "linear": lambda: RidgeCV() if regression else LogisticRegressionCV(max_iter=5000),
        "ours": lambda: estimator(random_state=0),
        "ours_previous_defaults": lambda: estimator(random_state=0, **(PREVIOUS_REGRESSOR if regression else PREVIOUS)),
    }
    scores = {key: [] for key in ("linear", "ours_simulate", "ours_disable", "ours_previous_defaults_simulate")}
    epochs = []
    for split in range(SPLITS):
        X_train, X_test, y_train, y_test = train_test_split(
            X.astype(np.float32), y, test_size=0.25, random_state=split, stratify=None if regression else y)
        for key, make in models.items():
            pipe = make_pipeline(StandardScaler(), make()).fit(X_train, y_train)
            if key == "linear":
                scores[key].append(metric(y_test, pipe.predict(X_test)))
                continue
            modes = ("simulate", "disable") if key == "ours" else ("simulate",)
            X_seen = pipe[:-1].transform(X_test)
            for fhe in modes:
                scores[f"{key}_{fhe}"].append(metric(y_test, pipe[-1].predict(X_seen, fhe=fhe)))
            if key == "ours":
                epochs.append(len(pipe[-1].history))
        log(f"{name} split {split}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in scores.items()))
    return {
        "rows": int(len(X)), "features": int(X.shape[1]), "metric": "r2" if regression else "accuracy",
        **{f"{key}_mean": round(float(np.mean(values)), 4) for key, values in scores.items()},
        **{f"{key}_min": round(float(np.min(values)), 4) for key, values in scores.items()},
        "ours_epochs_mean": round(float(np.mean(epochs)), 1),
    }


def main() -> dict:
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)  # LogisticRegressionCV's coming defaults
    start = time.perf_counter()
    results = {name: run(name) for name in ("diabetes", "friedman1", "iris", "wine", "breast_cancer")}
    return {"machine": machine(), "splits": SPLITS, "data_sets": results,
            "wall_s": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
