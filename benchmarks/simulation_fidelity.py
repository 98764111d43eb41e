"""Does ``fhe="simulate"`` predict what encryption gives? The default estimator, both ways.

``NeuralNetClassifier()`` (approximate rounding, ``p_error=0.3``: the bootstraps' mistakes
are frequent, so the simulation draws them) trained on the standardized checkerboard, as
in ``python -m fheestimators.demo``, then the same
test points predicted with real encryption and in simulation. Prints both accuracies,
their paired difference with a 95% interval, and how often the two agree per point;
the simulation's own seed-to-seed spread is given for scale.

Run: ``python benchmarks/simulation_fidelity.py --points 200 > results_simulation_fidelity.json``
(about 5 minutes of training and 0.7 s per encrypted point on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine  # noqa: E402

from sklearn.preprocessing import StandardScaler  # noqa: E402

from fheestimators import NeuralNetClassifier, make_checkerboard  # noqa: E402


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of ``a - b`` (per-point correctness) with a normal 95% interval."""
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": round(float(d.mean()), 4),
            "ci95": [round(float(d.mean() - half), 4), round(float(d.mean() + half), 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--max-epochs", type=int, default=None, help="override the default (for a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    X_train, X_test, y_train, y_test = make_checkerboard()
    # the demo's StandardScaler, applied once: the module is then called on the same rows
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    settings = {"random_state": args.seed}
    if args.max_epochs is not None:
        settings["max_epochs"] = args.max_epochs
    log("training NeuralNetClassifier()")
    clf = NeuralNetClassifier(**settings).fit(X_train, y_train)
    X, y = X_test[: args.points], y_test[: args.points]
    clear = clf.predict(X)
    simulated = {seed: clf.quantized_module_.forward(X, fhe="simulate", random_state=seed).argmax(1)
                 for seed in range(10)}
    simulated = {seed: clf.classes_[p] for seed, p in simulated.items()}
    log(f"executing {len(X)} points encrypted")
    start = time.perf_counter()
    executed = clf.predict(X, fhe="execute")
    execute_s = time.perf_counter() - start
    correct = {"execute": executed == y, "simulate": simulated[0] == y, "disable": clear == y}
    sim_accuracies = [float(np.mean(p == y)) for p in simulated.values()]
    results = {
        "machine": machine(),
        "points": len(X),
        "p_error": clf.fhe_circuit.p_error,
        "accuracy": {name: round(float(c.mean()), 4) for name, c in correct.items()},
        "execute_minus_simulate": paired_difference(correct["execute"], correct["simulate"]),
        "execute_minus_disable": paired_difference(correct["execute"], correct["disable"]),
        "agreement_execute_simulate": round(float(np.mean(executed == simulated[0])), 4),
        "agreement_simulate_seeds_0_1": round(float(np.mean(simulated[0] == simulated[1])), 4),
        "agreement_execute_disable": round(float(np.mean(executed == clear)), 4),
        "simulate_accuracy_over_10_seeds": {"mean": round(float(np.mean(sim_accuracies)), 4),
                                            "std": round(float(np.std(sim_accuracies, ddof=1)), 4)},
        "execute_s_per_point": round(execute_s / len(X), 3),
    }
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
