"""``NeuralNetRegressor()`` as a user gets it, on small regression data: before and after a change, same run.

Five data sets behind a ``StandardScaler``, each on several random 25% test splits:
diabetes (442 rows, 10 features), friedman1 (500 synthetic rows, a nonlinear target
with noise), ``make_regression`` (400 rows, 20 features, 10 informative, noise 20),
linnerud (20 rows, 3 targets: R² averaged over them) and friedman2 (400 rows, a
nonlinear target with noise). Per data set: R² of ``fhe="simulate"`` and
``fhe="disable"`` and of ``RidgeCV`` on the same splits (mean, sd, per split), the
splits on which the simulated R² reaches RidgeCV's, the circuit's bootstraps and
predicted seconds per encrypted sample (``fhe_cost_``), and the fit's seconds.

Run: ``python benchmarks/small_regression.py [--before REF] [--splits N] [--first-split S] [--data NAME ...]
> results_small_regression.json`` (``REF``, default ``HEAD``: the code to compare this tree with;
splits seeded S to S + N - 1; about 10 minutes per version with 5 splits on 2 cores).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine  # noqa: E402
from _versions import compare, parser as versions_parser  # noqa: E402


def data_sets() -> dict:
    from sklearn import datasets

    return {
        "diabetes": datasets.load_diabetes(return_X_y=True),
        "friedman1": datasets.make_friedman1(n_samples=500, noise=1.0, random_state=0),
        "regression": datasets.make_regression(n_samples=400, n_features=20, n_informative=10, noise=20.0,
                                               random_state=0),
        "linnerud": datasets.load_linnerud(return_X_y=True),
        "friedman2": datasets.make_friedman2(n_samples=400, noise=50.0, random_state=0),
    }


def summary(values: list) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values)), 4),
            "per_split": [round(float(v), 4) for v in values]}


def run(X: np.ndarray, y: np.ndarray, splits: range) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetRegressor

    scores: dict = {"ridge": [], "simulate": [], "disable": []}
    bootstraps, seconds, fit_s = [], [], []
    for split in splits:
        X_train, X_test, y_train, y_test = train_test_split(X.astype(np.float32), y, test_size=0.25,
                                                            random_state=split)
        ridge = make_pipeline(StandardScaler(), RidgeCV()).fit(X_train, y_train)
        scores["ridge"].append(r2_score(y_test, ridge.predict(X_test)))
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), NeuralNetRegressor(random_state=0)).fit(X_train, y_train)
        fit_s.append(time.perf_counter() - start)
        X_seen = model[:-1].transform(X_test)
        for mode in ("simulate", "disable"):
            scores[mode].append(r2_score(y_test, model[-1].predict(X_seen, fhe=mode)))
        cost = model[-1].fhe_cost_
        bootstraps.append(cost.programmable_bootstraps)
        seconds.append(cost.seconds_per_sample)
        log(f"split {split}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in scores.items()))
    return {
        "rows": int(len(X)), "features": int(X.shape[1]), "targets": int(np.asarray(y).reshape(len(y), -1).shape[1]),
        "r2": {key: summary(values) for key, values in scores.items()},
        "splits_simulate_at_least_ridge": int(np.sum(np.array(scores["simulate"]) >= np.array(scores["ridge"]))),
        "bootstraps_mean": round(float(np.mean(bootstraps)), 1),
        "predicted_s_per_sample_mean": round(float(np.mean(seconds)), 3),
        "fit_s_mean": round(float(np.mean(fit_s)), 2),
    }


def one_version(splits: range, names: list) -> dict:
    import torch

    torch.set_num_threads(1)  # tiny networks train fastest on one thread
    warnings.filterwarnings("ignore")
    results = {}
    for name, (X, y) in data_sets().items():
        if names and name not in names:
            continue
        log(name)
        results[name] = run(X, y, splits)
    return results


def main(argv=None) -> None:
    parser = versions_parser(__doc__)
    parser.add_argument("--splits", type=int, default=5, help="random 25%% test splits per data set")
    parser.add_argument("--first-split", type=int, default=0, help="seed of the first split (the others follow)")
    parser.add_argument("--data", nargs="*", default=[], help="only these data sets (default: all five)")
    args = parser.parse_args(argv)
    if args.one_version:
        print(json.dumps(one_version(range(args.first_split, args.first_split + args.splits), args.data)))
        return
    start = time.perf_counter()
    results = compare(__file__, ["--splits", str(args.splits), "--first-split", str(args.first_split),
                                 "--data", *args.data], args.before)
    results.update(splits=args.splits, first_split=args.first_split, machine=machine(),
                   wall_s=round(time.perf_counter() - start, 1))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
