"""What the estimator's accumulator rounding trades: accuracy against encrypted latency.

``NeuralNetClassifier()`` is trained on the demo's checkerboard split (once per seed),
then compiled again with each ``rounding_threshold_bits``; every setting is measured on
the 500 test points and on 50,000 fresh points of the board (the accuracy on the data's
distribution, to a tenth of a point), and one seed also runs encrypted (keygen and
seconds per sample, after one untimed run that pays the one-off set-up). ``none`` is
the unrounded network: Brevitas' own outputs, whose 14-bit lookups no FHE machine
runs, so it has accuracies only.

Run: ``python benchmarks/rounding_tradeoff.py [--seeds 3] [--bits none,8,7,6] [--fhe-samples 2]``
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    brevitas_predict, circuit_costs, log, machine, measure_execute, measure_keygen, release_keys, time_simulate,
)


def settings(text: str) -> list:
    """``"none,8,7,6"`` → ``[None, 8, 7, 6]``."""
    return [None if item.strip().lower() == "none" else int(item) for item in text.split(",")]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (the data split stays the demo's)")
    parser.add_argument("--bits", default="none,8,7,6", help="rounding_threshold_bits to compare, comma-separated")
    parser.add_argument("--fhe-samples", type=int, default=2, help="encrypted samples per setting, first seed only")
    parser.add_argument("--max-epochs", type=int, default=None, help="override the estimator's default")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks train fastest on one thread

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier, make_checkerboard
    from fheestimators.datasets import board_rule_accuracy, fresh_board_points

    X_train, X_test, y_train, y_test = make_checkerboard()
    X_fresh, y_fresh = fresh_board_points()
    results = {"test_points": len(y_test), "fresh_points": len(y_fresh),
               "bayes_test_accuracy": board_rule_accuracy(X_test, y_test),
               "bayes_fresh_accuracy": board_rule_accuracy(X_fresh, y_fresh), "settings": {}}
    extra = {} if args.max_epochs is None else {"max_epochs": args.max_epochs}
    for seed in range(args.seeds):
        log(f"seed {seed}: training NeuralNetClassifier()")
        model = make_pipeline(StandardScaler(), NeuralNetClassifier(random_state=seed, **extra)).fit(X_train, y_train)
        clf, scaled_train = model[-1], model[0].transform(X_train)

        def run(X, fhe="disable"):
            return model.predict(X, fhe=fhe)

        for bits in settings(args.bits):
            row = results["settings"].setdefault(str(bits).lower(), {"test_accuracy": [], "fresh_accuracy": []})
            if bits is None:
                predict = partial(brevitas_predict, model)
            else:
                clf.compile(scaled_train, rounding_threshold_bits=bits)
                predict = run
            row["test_accuracy"].append(float((predict(X_test) == y_test).mean()))
            row["fresh_accuracy"].append(float((predict(X_fresh) == y_fresh).mean()))
            if bits is not None and seed == 0:
                circuit = clf.fhe_circuit
                row.update(circuit_costs(circuit))
                simulated, _ = time_simulate(run, X_test)
                log(f"rounding {bits} bits: keygen and {args.fhe_samples} encrypted sample(s)")
                row.update(measure_keygen(circuit))
                run(X_test[-1:], "execute")  # the first run pays one-off set-up: not timed
                row.update(measure_execute(run, X_test, simulated, args.fhe_samples))
                release_keys(circuit)
    for row in results["settings"].values():
        for key in ("test_accuracy", "fresh_accuracy"):
            row[f"mean_{key}"] = round(float(np.mean(row[key])), 4)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
