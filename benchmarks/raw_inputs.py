"""The default estimators on scikit-learn's bundled data as loaded and behind a ``StandardScaler``:
before and after a change, same run.

Written for ``scale_inputs`` (each feature standardized in the clear before the network).
Per data set, 3 random 25% test splits: the mean simulated score (accuracy, or R² for the
regressors) of ``NeuralNetClassifier(random_state=0)`` / ``NeuralNetRegressor(random_state=0)``
fitted on the raw features and in ``make_pipeline(StandardScaler(), ...)``, the mean
predicted seconds per encrypted sample of each, and scikit-learn's ``MLPClassifier`` /
``MLPRegressor`` on the raw features for reference.

Run: ``python benchmarks/raw_inputs.py [--before REF] > benchmarks/results_raw_inputs.json``
(about 10 minutes per version on 2 cores).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log  # noqa: E402
from _versions import main as run_benchmark  # noqa: E402

SPLITS = 3
CLASSIFICATION = ("iris", "wine", "breast_cancer", "digits")
REGRESSION = ("diabetes", "linnerud")


def one_version() -> dict:
    import torch
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier, NeuralNetRegressor

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = {}
    for name in (*CLASSIFICATION, *REGRESSION):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        regression = name in REGRESSION
        estimator, mlp = (NeuralNetRegressor, MLPRegressor) if regression else (NeuralNetClassifier, MLPClassifier)
        X = X.astype(np.float32)
        y = y.astype(np.float32) if regression else y
        scores: dict = {"raw": [], "scaled": [], "raw_s_per_sample": [], "scaled_s_per_sample": [],
                        "sklearn_mlp_raw": []}
        for split in range(SPLITS):
            X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=split)
            for kind in ("raw", "scaled"):
                model = estimator(random_state=0)
                model = model if kind == "raw" else make_pipeline(StandardScaler(), model)
                model.fit(X_train, y_train)
                predicted = model.predict(X_test, fhe="simulate")
                scores[kind].append(_score(y_test, predicted, regression))
                final = model if kind == "raw" else model[-1]
                scores[f"{kind}_s_per_sample"].append(final.fhe_cost_.seconds_per_sample)
            reference = mlp(random_state=0, max_iter=1000).fit(X_train, y_train)
            scores["sklearn_mlp_raw"].append(float(reference.score(X_test, y_test)))
        results[name] = {key: {"mean": float(np.mean(values)), "per_split": values} for key, values in scores.items()}
        log(f"{name}: raw {results[name]['raw']['mean']:.4f}, scaled {results[name]['scaled']['mean']:.4f}")
    return results


def _score(y_true, y_pred, regression: bool) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y_true, y_pred) if regression else np.mean(y_true == y_pred))


def main(argv=None) -> None:
    run_benchmark(__doc__, __file__, one_version, argv)


if __name__ == "__main__":
    main()
