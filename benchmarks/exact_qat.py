"""Exact QAT circuits (issue 22, part 2): the specification's QAT network, before and after tabulation.

``QATPrunedSimpleNet`` (100 hidden, 20 non-zero weights per neuron, 3 bits, 7 epochs on
the checkerboard) compiled with ``compile_brevitas_qat_model(model, X_train)`` on the
whole 9,500-point training set, in the same run, as:

* ``exact_auto``: the default before tabulation (``rounding_threshold_bits`` "auto",
  exact), tabulation switched off;
* ``approximate_auto``: ``{"n_bits": "auto"}`` (approximate rounding), tabulation off;
* ``tabulated``: today's default: the program is one lookup per output on the packed
  inputs (``quantization/tabulate.py``);
* ``tabulated_full_range``: the same on an inputset with one more point at (-1, -1), so
  each input's clip range is the quantizer's whole 7 values (49 combinations, not 16).

Per variant: bootstraps, widest integer, compile, key generation, seconds per encrypted
sample (median of ``--timed`` one-sample runs after an untimed one), and agreement of
the predicted class with Brevitas' own output on the 500 test points in simulation and
on ``--execute-points`` of them encrypted.

Run: ``python benchmarks/exact_qat.py > benchmarks/results_exact_qat.json`` (JSON on stdout,
progress on stderr; ``--variants tabulated --execute-points 4`` for a smoke run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import circuit_costs, log, machine, measure_keygen, release_keys, stopwatch  # noqa: E402
from _networks import QATPrunedSimpleNet, logits, train  # noqa: E402

from fheestimators.datasets import make_checkerboard  # noqa: E402
from fheestimators.quantization import tabulate as tabulation  # noqa: E402
from fheestimators.torch.compile import compile_brevitas_qat_model  # noqa: E402

VARIANTS = {
    "exact_auto": dict(tabulate=False, options={}),
    "approximate_auto": dict(tabulate=False, options={"rounding_threshold_bits": {"n_bits": "auto"}}),
    "tabulated": dict(tabulate=True, options={}),
    "tabulated_full_range": dict(tabulate=True, options={}, extra_point=(-1.0, -1.0)),
}


def measure(model, X_train, X_test, brevitas, variant: dict, execute_points: int, timed: int) -> dict:
    inputset = X_train
    if "extra_point" in variant:
        inputset = np.concatenate([X_train, np.array([variant["extra_point"]], dtype=X_train.dtype)])
    limit = tabulation.MAX_TABULATED_COMBINATIONS if variant["tabulate"] else 0
    with tabulation.tabulation_limit(limit), stopwatch() as t:
        module = compile_brevitas_qat_model(model, inputset, **variant["options"])
    circuit = module.fhe_circuit
    row = {"compile_s": round(t.wall, 2), **circuit_costs(circuit),
           "tabulated": module.program.input_domains is not None, "input_ranges": module.input_ranges,
           "lookups": [(r.name, r.accumulator_bits, r.lookup_bits, r.table_lookups) for r in module.layer_reports()]}
    simulated = module.forward(X_test, fhe="simulate").argmax(1)
    row["simulate_agreement_with_brevitas"] = round(float((simulated == brevitas).mean()), 4)
    row["disable_agreement_with_brevitas"] = round(float((module.forward(X_test).argmax(1) == brevitas).mean()), 4)
    row.update(measure_keygen(circuit))
    module.forward(X_test[:1], fhe="execute")  # one-off set-up: not timed
    times = []
    for i in range(timed):
        with stopwatch() as t:
            module.forward(X_test[i : i + 1], fhe="execute")
        times.append(t.wall)
    row["execute_s_per_sample"] = round(statistics.median(times), 3)
    row["execute_s_all"] = [round(x, 3) for x in times]
    executed = module.forward(X_test[:execute_points], fhe="execute").argmax(1)
    row["execute_points"] = execute_points
    row["execute_agreement_with_brevitas"] = round(float((executed == brevitas[:execute_points]).mean()), 4)
    row["execute_equals_simulate"] = bool(np.array_equal(executed, simulated[:execute_points]))
    release_keys(circuit)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--execute-points", type=int, default=24, help="test points run encrypted per variant")
    parser.add_argument("--timed", type=int, default=5, help="one-sample encrypted runs timed per variant")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the initial weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks train fastest on one thread

    X_train, X_test, y_train, y_test = make_checkerboard()
    log("QATPrunedSimpleNet(100), 20 non-zero, 3 bits: training 7 epochs")
    torch.manual_seed(args.seed)
    model = train(QATPrunedSimpleNet(100), X_train, y_train, epochs=7, max_non_zero=20)
    brevitas = logits(model, X_test).argmax(1)
    results = {"seed": args.seed, "test_points": len(X_test), "inputset": len(X_train),
               "brevitas_accuracy": round(float((brevitas == y_test).mean()), 4), "machine": machine(),
               "variants": {}}
    for name in args.variants.split(","):
        log(f"variant {name}")
        results["variants"][name] = measure(model, X_train, X_test, brevitas, VARIANTS[name],
                                            args.execute_points, args.timed)
        log(json.dumps({k: v for k, v in results["variants"][name].items() if k != "lookups"}))
    base = results["variants"].get("exact_auto")
    for row in results["variants"].values():
        if base is not None:
            row["speedup_vs_exact_auto"] = round(base["execute_s_per_sample"] / row["execute_s_per_sample"], 1)
            row["keygen_ratio_vs_exact_auto"] = round(row["keygen_s"] / base["keygen_s"], 3)
    results["machine_at_end"] = machine()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
