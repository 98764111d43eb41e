"""``NeuralNetClassifier()`` as a user gets it, on data of two features: before and after a change, same run.

The checkerboard (the README's main job): trained on the specification's 9,500 points
behind a ``StandardScaler``, scored on 30,000 fresh points for each of two seeds, in
``fhe="disable"`` and ``"simulate"``; the circuit's predicted and measured seconds per
encrypted sample, key generation, compressed evaluation keys and bootstraps. Then the
same defaults on other two-feature data (moons, circles, three blobs,
make_classification, iris' petals), 3 stratified 30% test splits each, simulated.

Run: ``python benchmarks/default_estimator.py [--before REF] > results_default_estimator.json``
(``REF``, default ``HEAD``: the code to compare this tree with; about 30 minutes per
version on 2 cores).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log  # noqa: E402
from _versions import main as run_benchmark  # noqa: E402

SPLITS = 3
FRESH_POINTS_PER_SEED = 30_000
EXECUTED_SAMPLES = 10


def two_feature_sets() -> dict:
    from sklearn import datasets

    iris = datasets.load_iris()
    return {
        "moons": datasets.make_moons(2000, noise=0.3, random_state=0),
        "circles": datasets.make_circles(2000, noise=0.15, factor=0.5, random_state=0),
        "blobs": datasets.make_blobs(2000, centers=3, cluster_std=2.0, random_state=0),
        "classification": datasets.make_classification(2000, n_features=2, n_redundant=0, n_informative=2,
                                                       flip_y=0.05, random_state=0),
        "iris_petals": (iris.data[:, 2:], iris.target),
    }


def checkerboard() -> dict:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier, make_checkerboard
    from fheestimators.datasets import fresh_board_points

    X_train, X_test, y_train, _ = make_checkerboard()
    start = time.perf_counter()
    model = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0)).fit(X_train, y_train)
    result: dict = {"fit_s": time.perf_counter() - start, "accuracy": {}}
    for seed in (0, 1):
        X, y = fresh_board_points(FRESH_POINTS_PER_SEED // 10_000, first_seed=1000 + 10 * seed)
        result["accuracy"][f"seed{seed}"] = {mode: float((model.predict(X, fhe=mode) == y).mean())
                                             for mode in ("disable", "simulate")}
    cost = model[-1].fhe_cost_
    result.update(predicted_s_per_sample=cost.seconds_per_sample, bootstraps=cost.programmable_bootstraps,
                  evaluation_key_mb_compressed=cost.evaluation_key_bytes_compressed / 2**20,
                  lookup_bit_widths=[list(pair) for pair in cost.lookup_bit_widths])
    rows = X_test[:EXECUTED_SAMPLES + 1]
    start = time.perf_counter()
    first = model.predict(rows[:1], fhe="execute")  # generates the keys
    result["keygen_and_first_sample_s"] = time.perf_counter() - start
    start = time.perf_counter()
    executed = model.predict(rows[1:], fhe="execute")
    result["execute_s_per_sample"] = (time.perf_counter() - start) / EXECUTED_SAMPLES
    result["execute_agrees_with_disable"] = float((np.r_[first, executed] == model.predict(rows)).mean())
    return result


def other_sets() -> dict:
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier

    scores = {}
    for name, (X, y) in two_feature_sets().items():
        accuracies, seconds = [], []
        for split in range(SPLITS):
            X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=split, stratify=y)
            model = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0)).fit(X_train, y_train)
            accuracies.append(float((model.predict(X_test, fhe="simulate") == y_test).mean()))
            seconds.append(model[-1].fhe_cost_.seconds_per_sample)
        scores[name] = {"simulated_accuracy": float(np.mean(accuracies)), "per_split": accuracies,
                        "predicted_s_per_sample": float(np.mean(seconds))}
        log(f"{name}: {scores[name]['simulated_accuracy']:.4f}")
    return scores


def one_version() -> dict:
    import torch

    torch.set_num_threads(1)  # tiny networks train fastest on one thread
    warnings.filterwarnings("ignore")
    return {"checkerboard": checkerboard(), "two_feature_data": other_sets()}


def main(argv=None) -> None:
    run_benchmark(__doc__, __file__, one_version, argv)


if __name__ == "__main__":
    main()
