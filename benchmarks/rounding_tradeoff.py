"""What the estimator's accumulator rounding and error probability trade: accuracy against latency.

``NeuralNetClassifier()`` is trained on the demo's checkerboard split (once per seed),
then compiled again with each setting ``bits:p_error`` (``7:0.02``: rounding to 7 bits,
each lookup may err with probability 0.02; ``8/7:0.2``: 8 bits before the first layer's
lookups, 7 before the others'; ``6:g0.001``: ``global_p_error=0.001``).
Every setting is measured in simulation, which draws the lookups' mistakes as FHE
makes them, on the 500 test points and on 50,000 fresh points of the board (the
accuracy on the data's distribution, to a tenth of a point); the clear run's accuracy
on the fresh points shows what the mistakes cost. One seed also runs encrypted (keygen
and seconds per sample, after one untimed run that pays the one-off set-up). ``none``
is the unrounded network: Brevitas' own outputs, whose 14-bit lookups no FHE machine
runs, so it has accuracies only.

Run: ``python benchmarks/rounding_tradeoff.py [--seeds 3] [--settings none,8/7:0.2,7:0.02] [--fhe-samples 2]``
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


def settings(text: str) -> list[tuple[str, dict]]:
    """``"none,8/7:0.2,6:g0.001"`` → ``[("none", None), ("8/7:0.2", {compile options}), ...]``."""
    parsed = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item == "none":
            parsed.append((item, None))
            continue
        bits, _, error = item.partition(":")
        per_layer = tuple(int(b) for b in bits.split("/"))
        options = {"rounding_threshold_bits": per_layer if len(per_layer) > 1 else per_layer[0]}
        if error.startswith("g"):
            options["global_p_error"] = float(error[1:])
        elif error:
            options["p_error"] = float(error)
        parsed.append((item, options))
    return parsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (the data split stays the demo's)")
    parser.add_argument("--settings", default="none,8/7:0.2,8/8:0.3,8/7:0.02,7:0.2,7:0.02,6:0.02,7:g0.001",
                        help="bits:p_error (or bits:gGLOBAL_P_ERROR) to compare, comma-separated")
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

        for name, options in settings(args.settings):
            row = results["settings"].setdefault(name, {"test_accuracy": [], "fresh_accuracy": [],
                                                        "fresh_clear_accuracy": []})
            if options is None:
                predict = partial(brevitas_predict, model)
            else:
                clf.compile(scaled_train, **options)
                predict = partial(run, fhe="simulate")
                row["fresh_clear_accuracy"].append(float((run(X_fresh) == y_fresh).mean()))
            row["test_accuracy"].append(float((predict(X_test) == y_test).mean()))
            row["fresh_accuracy"].append(float((predict(X_fresh) == y_fresh).mean()))
            if options is not None and seed == 0:
                circuit = clf.fhe_circuit
                row.update(circuit_costs(circuit))
                simulated, _ = time_simulate(run, X_test)
                log(f"setting {name}: keygen and {args.fhe_samples} encrypted sample(s)")
                row.update(measure_keygen(circuit))
                run(X_test[-1:], "execute")  # the first run pays one-off set-up: not timed
                row.update(measure_execute(run, X_test, simulated, args.fhe_samples))
                release_keys(circuit)
    for row in results["settings"].values():
        for key in ("test_accuracy", "fresh_accuracy", "fresh_clear_accuracy"):
            if row[key]:
                row[f"mean_{key}"] = round(float(np.mean(row[key])), 4)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
