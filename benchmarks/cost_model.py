"""Predicted against measured FHE cost on the networks of issue 22.

For each network, ``cost()`` right after compiling (no keys), then key generation
(timed) and encrypted one-sample runs (median of ``--repeats`` after an untimed one):

* ``NeuralNetClassifier()`` on the checkerboard behind a ``StandardScaler``;
* ``NeuralNetClassifier()`` on scikit-learn's breast_cancer and digits (7-bit rounding);
* the specification's ``QATPrunedSimpleNet(100)`` (30 non-zero weights per neuron, as in
  the checkerboard benchmark) compiled with ``compile_brevitas_qat_model`` on 2000
  training points: tabulated (the default), and untabulated with exact and approximate
  rounding.

The estimators train briefly (``--epochs``): their cost depends on the circuit's shape
and bit-widths, not on the trained weights. The QAT network trains as in the checkerboard
benchmark (``--qat-epochs``, 20): its automatic rounding, hence its bootstraps, depends on
how well it is trained. The machine's load is recorded at each measurement.

Run: ``python benchmarks/cost_model.py > results_cost_model.json`` (about 10 minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine, median_execute_s, standardized_checkerboard, stopwatch  # noqa: E402
from _networks import QATPrunedSimpleNet, train  # noqa: E402

from fheestimators import NeuralNetClassifier, compile_brevitas_qat_model  # noqa: E402
from fheestimators.quantization.tabulate import tabulation_limit  # noqa: E402


def measure(name: str, module, X: np.ndarray, repeats: int) -> dict:
    """Predicted cost, then the measured one, of a compiled ``QuantizedModule``."""
    cost = module.cost()
    circuit = module.fhe_circuit
    load_before = machine()["load_average_1min"]
    with stopwatch() as keygen:
        circuit.keygen(force=True)
    keygen_s = keygen.wall
    measured, measured_cpu = median_execute_s(module, X, repeats)
    circuit.cleanup()
    log(f"{name}: predicted {cost.seconds_per_sample:.2f} s, measured {measured:.2f} s; "
        f"keygen predicted {cost.keygen_seconds:.1f} s, measured {keygen_s:.1f} s")
    return {
        "network": name,
        "programmable_bootstraps": cost.programmable_bootstraps,
        "lookup_bit_widths": cost.lookup_bit_widths,
        "bootstrap_keys": cost.bootstrap_keys,
        "complexity": cost.complexity,
        "evaluation_key_bytes": cost.evaluation_key_bytes,
        "evaluation_key_bytes_compressed": cost.evaluation_key_bytes_compressed,
        "predicted_s_per_sample": round(cost.seconds_per_sample, 3),
        "measured_s_per_sample": round(measured, 3),
        "s_per_sample_error": round(cost.seconds_per_sample / measured - 1, 3),
        "predicted_keygen_s": round(cost.keygen_seconds, 2),
        "measured_keygen_s": round(keygen_s, 2),
        # CPU seconds of this process: what other processes' load does not inflate
        "measured_cpu_s_per_sample": round(measured_cpu, 3),
        "measured_keygen_cpu_s": round(keygen.cpu, 2),
        "keygen_error": round(cost.keygen_seconds / keygen_s - 1, 3),
        "load_average_1min": [load_before, machine()["load_average_1min"]],
        "calibration": cost.calibration,
    }


def estimator_rows(epochs: int, repeats: int) -> list[dict]:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, _ = standardized_checkerboard()
    clf = NeuralNetClassifier(max_epochs=epochs, random_state=0).fit(X_train, y_train)
    rows = [measure("NeuralNetClassifier(), checkerboard", clf.quantized_module_, X_test, repeats)]
    for name, loader in (("breast_cancer", load_breast_cancer), ("digits", load_digits)):
        X, y = loader(return_X_y=True)
        X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = (scaler.transform(a).astype(np.float32) for a in (X_train, X_test))
        clf = NeuralNetClassifier(max_epochs=epochs, random_state=0).fit(X_train, y_train)
        rows.append(measure(f"NeuralNetClassifier(), {name}", clf.quantized_module_, X_test, repeats))
    return rows


def qat_rows(epochs: int, repeats: int) -> list[dict]:
    X_train, X_test, y_train, _ = standardized_checkerboard()
    net = train(QATPrunedSimpleNet(100), X_train, y_train, epochs=epochs, max_non_zero=30)
    module = compile_brevitas_qat_model(net, X_train[:2000])
    rows = [measure("QATPrunedSimpleNet(100), 30 non-zero, tabulated (the default)", module, X_test, repeats)]
    with tabulation_limit(0):  # the per-neuron circuits of before tabulation: the model's larger cases
        for method in ("exact", "approximate"):
            module = compile_brevitas_qat_model(net, X_train[:2000],
                                                rounding_threshold_bits={"n_bits": "auto", "method": method})
            rows.append(measure(f"QATPrunedSimpleNet(100), 30 non-zero, untabulated, {method} rounding",
                                module, X_test, repeats))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the estimators")
    parser.add_argument("--qat-epochs", type=int, default=20, help="training epochs of QATPrunedSimpleNet")
    parser.add_argument("--repeats", type=int, default=3, help="timed one-sample runs per network")
    parser.add_argument("--networks", nargs="+", choices=("estimators", "qat"), default=["estimators", "qat"],
                        help="which networks to measure")
    args = parser.parse_args()
    rows = ((estimator_rows(args.epochs, args.repeats) if "estimators" in args.networks else [])
            + (qat_rows(args.qat_epochs, args.repeats) if "qat" in args.networks else []))
    print(json.dumps({"machine": machine(), "epochs": args.epochs, "qat_epochs": args.qat_epochs, "rows": rows},
                     indent=2))


if __name__ == "__main__":
    main()
