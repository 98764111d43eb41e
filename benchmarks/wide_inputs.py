"""The classifier's defaults on data of more than 2 features: before and after a change, same run.

``make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0))`` on scikit-learn's
breast_cancer (30 features) and digits (64), each on 5 stratified 25% test splits, next to
scikit-learn's float ``MLPClassifier`` (same scaler, ``max_iter=1000``) on the same splits:
clear and simulated accuracy (mean and sd over the splits), fit seconds, bootstraps, the
bootstrap keys' parameters, compressed evaluation keys and predicted seconds per encrypted
sample (``fhe_cost_``); on the first split, measured seconds per encrypted sample (median of
5 samples after key generation and one untimed sample). Then the same defaults, simulated
only, on other data of more than 2 features (wine, iris, 20-feature make_classification).

Run: ``python benchmarks/wide_inputs.py [--before REF] > results_wide_inputs.json``
(``REF``, default ``HEAD``: the code to compare this tree with; about 15 minutes per
version on 2 cores). Seconds measured in two runs, one after the other, drift with the
machine's load: ``--interleaved ROUNDS`` (``> results_wide_inputs_interleaved.json``)
instead trains the previous default network (two hidden layers) and the current one with
this tree and times their encrypted samples in turn.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine  # noqa: E402
from _versions import parser as versions_parser, report  # noqa: E402

SPLITS = 5
TIMED_SAMPLES = 5


def data_sets(wide: bool) -> dict:
    from sklearn import datasets

    if wide:
        return {"breast_cancer": datasets.load_breast_cancer(return_X_y=True),
                "digits": datasets.load_digits(return_X_y=True)}
    return {"wine": datasets.load_wine(return_X_y=True), "iris": datasets.load_iris(return_X_y=True),
            "classification_20": datasets.make_classification(1000, n_features=20, n_informative=10,
                                                              n_classes=3, random_state=0)}


def mean_sd(values: list) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values)), 4),
            "per_split": [round(float(v), 4) for v in values]}


def seconds_per_encrypted_sample(model, X_test: np.ndarray) -> dict:
    circuit = model[-1].fhe_circuit
    start = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - start
    model.predict(X_test[:1], fhe="execute")  # the first run also pays one-off set-up
    latencies, agree = [], []
    for i in range(1, TIMED_SAMPLES + 1):
        start = time.perf_counter()
        executed = model.predict(X_test[i:i + 1], fhe="execute")
        latencies.append(time.perf_counter() - start)
        agree.append(bool(executed[0] == model.predict(X_test[i:i + 1], fhe="simulate")[0]))
    return {"measured_s_per_sample": round(float(np.median(latencies)), 3), "keygen_s": round(keygen_s, 2),
            "execute_agrees_with_simulate": float(np.mean(agree)), "load_average_1min": round(os.getloadavg()[0], 2)}


def evaluate(name: str, X: np.ndarray, y: np.ndarray, execute: bool) -> dict:
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier

    rows: dict = {key: [] for key in ("float_mlp", "clear", "simulated", "fit_s", "predicted_s", "key_mb")}
    for split in range(SPLITS):
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=split)
        mlp = make_pipeline(StandardScaler(), MLPClassifier(random_state=0, max_iter=1000)).fit(X_train, y_train)
        rows["float_mlp"].append(mlp.score(X_test, y_test))
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0)).fit(X_train, y_train)
        rows["fit_s"].append(time.perf_counter() - start)
        rows["clear"].append(model.score(X_test, y_test))
        rows["simulated"].append(float((model.predict(X_test, fhe="simulate") == y_test).mean()))
        cost = model[-1].fhe_cost_
        rows["predicted_s"].append(cost.seconds_per_sample)
        rows["key_mb"].append(cost.evaluation_key_bytes_compressed / 2**20)
        rows.setdefault("bootstraps", []).append(cost.programmable_bootstraps)
        rows.setdefault("lookup_bit_widths", []).append([list(pair) for pair in cost.lookup_bit_widths])
        rows.setdefault("bootstrap_keys_n_N_k_levels", []).append([list(key) for key, _ in cost.bootstrap_keys])
        log(f"{name} split {split}: simulated {rows['simulated'][-1]:.4f}, {cost.programmable_bootstraps} PBS, "
            f"{cost.seconds_per_sample:.3f} s predicted")
        if execute and split == 0:
            rows["execute_split0"] = seconds_per_encrypted_sample(model, X_test)
            log(f"{name}: {rows['execute_split0']}")
    result = {key: mean_sd(rows[key]) for key in ("float_mlp", "clear", "simulated")}
    result["simulated_minus_float_mlp"] = round(result["simulated"]["mean"] - result["float_mlp"]["mean"], 4)
    result.update({key: round(float(np.mean(rows[key])), 3) for key in ("fit_s", "predicted_s", "key_mb")})
    result.update({key: rows[key] for key in ("bootstraps", "lookup_bit_widths", "bootstrap_keys_n_N_k_levels")})
    if execute:
        result["execute_split0"] = rows["execute_split0"]
    return {"features": X.shape[1], **result}


def interleaved(rounds: int) -> dict:
    """Both networks trained by this tree on split 0, their encrypted samples timed in turn (A B A B ...).

    The previous default network is ``module__n_layers=3`` with QATMLP's own bits; taking the
    ratio pair by pair keeps it meaningful when the machine's load drifts.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier

    result = {}
    for name, (X, y) in data_sets(True).items():
        X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        models = {label: make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0, **params))
                  for label, params in (("two_hidden_layers", {"module__n_layers": 3}), ("default", {}))}
        for model in models.values():
            model.fit(X_train, y_train)[-1].fhe_circuit.keygen(force=True)
            model.predict(X_test[:1], fhe="execute")
        seconds: dict = {label: [] for label in models}
        for i in range(1, rounds + 1):
            for label, model in models.items():
                start = time.perf_counter()
                model.predict(X_test[i:i + 1], fhe="execute")
                seconds[label].append(time.perf_counter() - start)
        ratios = np.array(seconds["two_hidden_layers"]) / np.array(seconds["default"])
        result[name] = {**{f"{label}_median_s": round(float(np.median(s)), 3) for label, s in seconds.items()},
                        **{f"{label}_predicted_s": round(m[-1].fhe_cost_.seconds_per_sample, 3)
                           for label, m in models.items()},
                        "speedup_median_of_pairs": round(float(np.median(ratios)), 2),
                        "speedup_min_max": [round(float(ratios.min()), 2), round(float(ratios.max()), 2)]}
        log(f"{name}: {result[name]}")
    return {"rounds": rounds, "data": result, "load_average_1min_end": round(os.getloadavg()[0], 2)}


def one_version() -> dict:
    warnings.filterwarnings("ignore")
    return {"wide_data": {name: evaluate(name, X, y, execute=True) for name, (X, y) in data_sets(True).items()},
            "other_data": {name: evaluate(name, X, y, execute=False) for name, (X, y) in data_sets(False).items()}}


def main(argv=None) -> None:
    parser = versions_parser(__doc__)
    parser.add_argument("--interleaved", type=int, metavar="ROUNDS",
                        help="instead: time both networks' encrypted samples in turn, ROUNDS pairs (this tree only)")
    args = parser.parse_args(argv)
    if args.one_version or args.interleaved:
        result = one_version() if args.one_version else {**interleaved(args.interleaved), "machine": machine()}
        print(json.dumps(result))
        return
    report(__file__, [], args.before)


if __name__ == "__main__":
    main()
