"""NeuralNetClassifier defaults on the checkerboard data: accuracy and FHE costs as JSON.

Run: ``python benchmarks/estimator_checkerboard.py [--fhe-samples 2] [--seed 0]``
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fheestimators import NeuralNetClassifier, make_checkerboard


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fhe-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    X_train, X_test, y_train, y_test = make_checkerboard(random_state=args.seed)

    model = make_pipeline(StandardScaler(), NeuralNetClassifier())
    start = time.perf_counter()
    model.fit(X_train, y_train)
    results = {"fit_s": round(time.perf_counter() - start, 2)}
    clf = model[-1]
    X_scaled = model[0].transform(X_test)
    with torch.no_grad():
        brevitas = clf.module_(torch.from_numpy(X_scaled.astype(np.float32))).argmax(1).numpy()
    results["brevitas_accuracy"] = float((clf.classes_[brevitas] == y_test).mean())
    start = time.perf_counter()
    simulated = model.predict(X_test, fhe="simulate")
    results["simulate_s_500"] = round(time.perf_counter() - start, 4)
    results["simulate_accuracy"] = float((simulated == y_test).mean())
    start = time.perf_counter()
    clf.compile(X_scaled)
    results["compile_s"] = round(time.perf_counter() - start, 2)
    circuit = clf.fhe_circuit
    results["programmable_bootstraps"] = circuit.programmable_bootstrap_count
    results["max_bit_width"] = circuit.graph.maximum_integer_bit_width()
    start = time.perf_counter()
    circuit.keygen()
    results["keygen_s"] = round(time.perf_counter() - start, 2)
    results["evaluation_keys_mb"] = round(
        (circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys) / 2**20, 1)
    n = args.fhe_samples
    start = time.perf_counter()
    executed = model.predict(X_test[:n], fhe="execute")
    results["execute_s_per_sample"] = round((time.perf_counter() - start) / n, 2)
    results["execute_equals_simulate"] = bool(np.array_equal(executed, simulated[:n]))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
