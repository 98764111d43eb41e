"""The main job: train on the checkerboard, compile, predict encrypted, print accuracy and latency.

``NeuralNetClassifier()`` with its defaults, behind a ``StandardScaler``: the path most
users take. Run with ``python -m fheestimators.demo`` (``--help`` for options).

Accuracies are given on the 500 test points of the specification's split and, in
simulation, on 50,000 fresh points of the board (new noise draws): 500 points
measure an accuracy to about one point, 50,000 to a tenth. Each comes with the
accuracy of the board's exact rule on the same points, the best any model can do.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .datasets import board_rule_accuracy, fresh_board_points, make_checkerboard
from .sklearn import NeuralNetClassifier


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fhe-samples", type=int, default=10, help="test points to run encrypted")
    parser.add_argument("--seed", type=int, default=0, help="seeds the training (the data keeps its own)")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the estimator's default")
    args = parser.parse_args(argv)

    X_train, X_test, y_train, y_test = make_checkerboard()
    settings = {"random_state": args.seed, "verbose": 1}  # a progress bar over the epochs
    if args.max_epochs is not None:
        settings["max_epochs"] = args.max_epochs
    model = make_pipeline(StandardScaler(), NeuralNetClassifier(**settings))
    print(f"training {model[-1].max_epochs} epochs on {len(X_train)} points, then compiling ...", flush=True)
    start = time.perf_counter()
    model.fit(X_train, y_train)
    results = {"fit_and_compile_s": round(time.perf_counter() - start, 2)}
    print(model[-1].quantized_module_.report())

    results["bayes_accuracy"] = board_rule_accuracy(X_test, y_test)
    test_predictions = {}
    for mode in ("disable", "simulate"):
        start = time.perf_counter()
        pred = test_predictions[mode] = model.predict(X_test, fhe=mode)
        results[f"{mode}_accuracy"] = float((pred == y_test).mean())
        results[f"{mode}_s_{len(X_test)}_points"] = round(time.perf_counter() - start, 4)
    X_fresh, y_fresh = fresh_board_points()
    results["fresh_points"] = len(y_fresh)
    results["fresh_bayes_accuracy"] = board_rule_accuracy(X_fresh, y_fresh)
    for mode in ("disable", "simulate"):
        results[f"fresh_{mode}_accuracy"] = float((model.predict(X_fresh, fhe=mode) == y_fresh).mean())

    circuit = model[-1].fhe_circuit
    print("generating keys ...", flush=True)
    start = time.perf_counter()
    circuit.keygen()
    results["keygen_s"] = round(time.perf_counter() - start, 2)
    n = args.fhe_samples
    latencies = []
    model[-1].verbose = 0  # no progress bar for single samples
    for i in range(4):  # the first run also pays one-off set-up: reported apart
        start = time.perf_counter()
        model.predict(X_test[i : i + 1], fhe="execute")
        latencies.append(time.perf_counter() - start)
    results["execute_first_sample_s"] = round(latencies[0], 3)
    results["execute_latency_s"] = round(float(np.median(latencies[1:])), 3)
    model[-1].verbose = 1  # a progress bar for the batch
    start = time.perf_counter()
    encrypted = model.predict(X_test[:n], fhe="execute")
    results[f"execute_s_per_sample_batch_of_{n}"] = round((time.perf_counter() - start) / n, 3)
    results["execute_accuracy_on_samples"] = float((encrypted == y_test[:n]).mean())
    # the bootstrap's noise is random: encrypted decisions agree with the simulated and clear
    # ones except where approximate rounding's mistakes move a point near the boundary
    for mode in ("simulate", "disable"):
        results[f"execute_agrees_with_{mode}"] = float((encrypted == test_predictions[mode][:n]).mean())
    results["programmable_bootstraps"] = circuit.programmable_bootstrap_count
    results["max_bit_width"] = circuit.graph.maximum_integer_bit_width()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
