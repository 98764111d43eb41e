"""Simulation fidelity over the clip box, and what sizing the program for it costs.

The default estimators (without learned input bins, where the version has them) behind a
``StandardScaler`` on seven data sets (iris, wine,
breast_cancer, digits and the checkerboard, trained on 2,000 of its points: classifiers;
diabetes and friedman1, 500 rows: regressors), each on ``SPLITS`` 25% test splits
(stratified for classes). For every split:

- the score of ``fhe="simulate"`` (mean over ``SIMULATION_SEEDS`` seeds) and of
  ``fhe="disable"``, accuracy or R² (the checkerboard: on 50,000 fresh points);
- what one encrypted sample costs (``fhe_cost_``: predicted seconds, bootstraps, widest
  integer) and the bits each lookup reads from how wide an accumulator;
- after compiling the same network again at ``p_error=1e-12``, on rows a client can send
  (each feature within its clip range): test rows, rows drawn column by column from the
  training values, uniform rows of the clip box and its corners, how many rows the
  simulation without bootstrap errors computes differently from ``disable`` (a value
  beyond the width concrete-python gave it wraps around: ``wrapped_rows``), and on how
  many the simulated decision differs from the clear one (the wraps' and approximate
  rounding's misreads together: ``decisions_differ``).

"Before" and "after" are two runs of this script on two versions of the package, in the
same session: ``python benchmarks/fidelity_bounds.py --label after > after.json``, then
``PYTHONPATH=<worktree of the previous commit> python benchmarks/fidelity_bounds.py --label
before > before.json`` (a ``git worktree`` of it), then
``python benchmarks/fidelity_bounds.py --combine before.json after.json`` prints both, with
the differences (``results_fidelity_bounds.json`` holds the runs of the design notes).
Training does not change between the versions: the same network is compiled both ways.
About 10 minutes per run on 2 cores; ``--splits 10 --data-sets breast_cancer digits``
about 10 more.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _measure import log, machine

SPLITS = 3
SIMULATION_SEEDS = 3
CHECKERBOARD_TRAINING_POINTS = 2000
FIDELITY_P_ERROR = 1e-12
FIDELITY_ROWS = 1000
DATA_SETS = ("iris", "wine", "breast_cancer", "digits", "checkerboard", "diabetes", "friedman1")


def load(name: str, split: int):
    """``(X_train, X_test, y_train, y_test, regression)``, float32 features."""
    from fheestimators import make_checkerboard
    from fheestimators.datasets import fresh_board_points

    if name == "checkerboard":
        X_train, _, y_train, _ = make_checkerboard(random_state=split)
        rows = np.random.default_rng(split).choice(len(X_train), CHECKERBOARD_TRAINING_POINTS, replace=False)
        X_test, y_test = fresh_board_points()
        return X_train[rows].astype(np.float32), X_test.astype(np.float32), y_train[rows], y_test, False
    if name == "friedman1":
        X, y = datasets.make_friedman1(n_samples=500, noise=1.0, random_state=0)
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    regression = name in ("diabetes", "friedman1")
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float32), y, test_size=0.25, random_state=split, stratify=None if regression else y)
    return X_train, X_test, y_train, y_test, regression


def clip_box_rows(module, X_train: np.ndarray, rng: np.random.Generator) -> dict:
    """Rows a client can send, in the estimator's input space: each feature within its clip range."""
    quantizer = module.program.input_quantizers[0]
    (low, high), = module.input_ranges
    box_low, box_high = (low - quantizer.zero_point) * quantizer.scale, (high - quantizer.zero_point) * quantizer.scale
    n_features = X_train.shape[1]
    return {
        "drawn_from_training_columns": np.stack(
            [rng.choice(X_train[:, j], 2 * FIDELITY_ROWS) for j in range(n_features)], axis=1),
        "box_uniform": rng.uniform(box_low, box_high, size=(FIDELITY_ROWS, n_features)),
        "box_corners": np.where(rng.random((FIDELITY_ROWS, n_features)) < 0.5, box_low, box_high),
    }


def fidelity(module, rows: np.ndarray, regression: bool, y_span: float) -> dict:
    """Rows whose simulation differs from ``disable``: without bootstrap errors (wraps only), and in decisions."""
    from fheestimators.fhe.execution import LookupNoise

    q = module.quantize_input(rows.astype(np.float32))
    clear = module.dequantize_output(module.program.run(q))
    simulated = module.forward(rows, fhe="simulate")
    errorless = LookupNoise(0.0, LookupNoise.from_circuit(module.fhe_circuit).bit_widths)
    wrapped = module.dequantize_output(module.program.run(q, round_lookup=errorless))
    if regression:
        differ = np.abs(simulated - clear).reshape(len(rows), -1).max(axis=1) > 0.01 * y_span
    else:
        differ = simulated.argmax(axis=1) != clear.argmax(axis=1)
    return {"rows": int(len(rows)),
            "wrapped_rows": int(np.sum(np.any((wrapped != clear).reshape(len(rows), -1), axis=1))),
            "decisions_differ": int(np.sum(differ))}


def run_split(name: str, split: int) -> dict:
    from fheestimators import NeuralNetClassifier, NeuralNetRegressor

    X_train, X_test, y_train, y_test, regression = load(name, split)
    estimator = NeuralNetRegressor if regression else NeuralNetClassifier
    # the network's program, not learned input bins (a tabulated program is exact on its domains)
    params = {"input_bins": None} if "input_bins" in estimator().get_params() else {}
    start = time.perf_counter()
    pipe = make_pipeline(StandardScaler(), estimator(random_state=0, **params)).fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    clf, module = pipe[-1], pipe[-1].quantized_module_
    X_seen, X_train_seen = pipe[:-1].transform(X_test), pipe[:-1].transform(X_train)
    metric = r2_score if regression else accuracy_score

    simulated = []
    for seed in range(SIMULATION_SEEDS):  # an int random_state seeds the simulation's draws
        clf.random_state = seed
        simulated.append(metric(y_test, clf.predict(X_seen, fhe="simulate")))
    clf.random_state = 0
    disabled = metric(y_test, clf.predict(X_seen, fhe="disable"))
    cost = clf.fhe_cost_
    reports = module.layer_reports()
    result = {
        "split": split, "fit_s": round(fit_s, 1), "epochs": len(clf.history),
        "simulate_score": round(float(np.mean(simulated)), 4), "disable_score": round(float(disabled), 4),
        "seconds_per_sample": round(float(cost.seconds_per_sample), 3),
        "programmable_bootstraps": int(cost.programmable_bootstraps), "max_bit_width": int(cost.max_bit_width),
        "lookup_bits": [r.lookup_bits for r in reports], "accumulator_bits": [r.accumulator_bits for r in reports],
        "input_range": [int(v) for v in module.input_ranges[0]],
    }
    clf.compile(X_train_seen[:2000], p_error=FIDELITY_P_ERROR)
    module = clf.quantized_module_
    y_span = float(np.ptp(y_train)) if regression else 1.0
    rows = {"test": X_seen[:5000], **clip_box_rows(module, X_train_seen, np.random.default_rng(split))}
    result["fidelity_at_p_error_1e-12"] = {
        key: fidelity(module, value, regression, y_span) for key, value in rows.items()}
    return result


def run(name: str, n_splits: int = SPLITS) -> dict:
    splits = []
    for split in range(n_splits):
        splits.append(run_split(name, split))
        log(f"{name} split {split}: simulate {splits[-1]['simulate_score']:.4f}, "
            f"{splits[-1]['seconds_per_sample']} s/sample, fidelity "
            + ", ".join(f"{k} {v['wrapped_rows']}/{v['decisions_differ']}"
                        for k, v in splits[-1]["fidelity_at_p_error_1e-12"].items()))
    summary = {key: round(float(np.mean([s[key] for s in splits])), 4)
               for key in ("simulate_score", "disable_score", "seconds_per_sample", "programmable_bootstraps",
                           "max_bit_width")}
    summary["fidelity_at_p_error_1e-12"] = {
        key: {count: int(sum(s["fidelity_at_p_error_1e-12"][key][count] for s in splits))
              for count in ("rows", "wrapped_rows", "decisions_differ")}
        for key in splits[0]["fidelity_at_p_error_1e-12"]}
    return {"metric": "r2" if name in ("diabetes", "friedman1") else "accuracy", "mean": summary, "splits": splits}


def combine(paths: list[str]) -> dict:
    """The runs side by side: per data set, each label's means and the last minus the first."""
    runs = [json.load(open(path)) for path in paths]
    labels = [r["label"] for r in runs]
    table = {}
    for name in runs[0]["data_sets"]:
        means = {r["label"]: r["data_sets"][name]["mean"] for r in runs if name in r["data_sets"]}
        first, last = means[labels[0]], means[labels[-1]]
        table[name] = {**means, "difference": {
            key: round(last[key] - first[key], 4)
            for key in ("simulate_score", "disable_score", "seconds_per_sample", "programmable_bootstraps",
                        "max_bit_width")}}
    return {"labels": labels, "machines": {r["label"]: r["machine"] for r in runs}, "data_sets": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="now", help="the version measured, e.g. before or after")
    parser.add_argument("--data-sets", nargs="*", default=list(DATA_SETS), choices=DATA_SETS)
    parser.add_argument("--splits", type=int, default=SPLITS, help="test splits per data set")
    parser.add_argument("--combine", nargs="+", metavar="RESULTS", help="JSON files of earlier runs to combine")
    args = parser.parse_args()
    if args.combine:
        print(json.dumps(combine(args.combine), indent=2))
        return
    warnings.filterwarnings("ignore", category=UserWarning)
    import fheestimators

    start = time.perf_counter()
    results = {name: run(name, args.splits) for name in args.data_sets}
    print(json.dumps({"label": args.label, "package": fheestimators.__file__, "machine": machine(),
                      "splits": args.splits, "data_sets": results, "wall_s": round(time.perf_counter() - start, 1)},
                     indent=2))


if __name__ == "__main__":
    main()
