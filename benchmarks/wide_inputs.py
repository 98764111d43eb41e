"""The estimators' defaults on wider data: scikit-learn's breast_cancer (30 features) and digits (64).

``make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0))`` on a 25% test
split (stratified, ``random_state=0``), next to scikit-learn's float ``MLPClassifier``.
The trained network is compiled with today's default rounding (7 bits beyond 2 features)
and with the previous default (8 bits), in the same run: simulated accuracy (mean over
5 simulation seeds), seconds per encrypted sample (median of 5, after one untimed run), bootstraps and the
bootstrap key's parameters.

Run: ``python benchmarks/wide_inputs.py > results.json``.
"""
from __future__ import annotations

import json
import time

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _measure import log, machine
from fheestimators import NeuralNetClassifier

PREVIOUS_DEFAULT = {"n_bits": 8, "method": "approximate"}
SIMULATION_SEEDS = 5


def measure(clf, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    module, circuit = clf.quantized_module_, clf.fhe_circuit
    simulated = [np.mean(clf.classes_[module.forward(X_test, fhe="simulate", random_state=seed).argmax(1)] == y_test)
                 for seed in range(SIMULATION_SEEDS)]
    circuit.keygen(force=True)
    clf.predict(X_test[:1], fhe="execute")  # the first run also pays one-off set-up
    latencies = []
    for i in range(1, 6):
        start = time.perf_counter()
        clf.predict(X_test[i : i + 1], fhe="execute")
        latencies.append(time.perf_counter() - start)
    keys = circuit.server.client_specs.program_info.get_keyset_info().bootstrap_keys()
    return {
        "rounding": clf.compile_settings_["rounding_threshold_bits"],
        "clear_accuracy": round(float(clf.score(X_test, y_test)), 4),
        "simulate_accuracy": round(float(np.mean(simulated)), 4),
        "s_per_encrypted_sample": round(float(np.median(latencies)), 3),
        "programmable_bootstraps": circuit.programmable_bootstrap_count,
        "bootstrap_keys_n_N": [[key.input_lwe_dimension(), key.polynomial_size()] for key in keys],
    }


def main() -> None:
    rows = []
    for name, loader in (("breast_cancer", load_breast_cancer), ("digits", load_digits)):
        X, y = loader(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        mlp = make_pipeline(StandardScaler(), MLPClassifier(random_state=0, max_iter=1000)).fit(X_train, y_train)
        log(f"{name}: fit")
        start = time.perf_counter()
        pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=0)).fit(X_train, y_train)
        fit_s = time.perf_counter() - start
        clf, scaler = pipe[-1], pipe[0]
        X_test_s = scaler.transform(X_test).astype(np.float32)
        log(f"{name}: default")
        default = measure(clf, X_test_s, y_test)
        log(f"{name}: previous default")
        clf.compile(scaler.transform(X_train).astype(np.float32), rounding_threshold_bits=PREVIOUS_DEFAULT)
        previous = measure(clf, X_test_s, y_test)
        rows.append({
            "data": name, "features": X.shape[1], "float_mlp_accuracy": round(float(mlp.score(X_test, y_test)), 4),
            "fit_s": round(fit_s, 1), "default": default, "previous_default_8_bits": previous,
            "speedup": round(previous["s_per_encrypted_sample"] / default["s_per_encrypted_sample"], 2),
        })
    print(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
