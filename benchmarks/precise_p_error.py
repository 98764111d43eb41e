"""TinyCNN encrypted at the user's ``p_error`` and at the lower one ``compile_torch_model`` keeps, interleaved.

``tiny_cnn.py`` times each version's circuit in turn; on a shared 2-core machine the load
moves more between them than a few percent of cost. Here the same trained network (seed 0,
as ``tiny_cnn.py``) is compiled twice in one process: as before the change
(``MORE_PRECISE_TRIES = 0``: the user's ``p_error=0.1``) and as after it (the ``p_error``
kept, at most 10% slower by the cost model). Both get keys, then encrypted samples run in
turn, before / after, and each pair's ratio is taken: the load drifts slowly against one
pair. Reported: each circuit's ``p_error``, complexity, predicted seconds and seconds per
sample, the paired ratios and their median, and the load average.

Run: ``python benchmarks/precise_p_error.py > benchmarks/results_precise_p_error.json``
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_cnn  # noqa: E402
from _measure import log, machine  # noqa: E402

PAIRS = 6


def main() -> None:
    import torch

    from fheestimators.torch import compile as door

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    X_train, X_test, _, y_test = tiny_cnn.digits()
    with tempfile.TemporaryDirectory(prefix="precise-p-error-") as tmp:
        weights = str(Path(tmp) / "tiny_cnn.pt")
        tiny_cnn.train(weights)
        net = tiny_cnn.tiny_cnn()
        net.load_state_dict(torch.load(weights))
    net.eval()
    modules, results = {}, {}
    for label, tries in (("before", 0), ("after", door.MORE_PRECISE_TRIES)):
        saved, door.MORE_PRECISE_TRIES = door.MORE_PRECISE_TRIES, tries
        try:
            module = door.compile_torch_model(net, X_train, rounding_threshold_bits=6, p_error=0.1)
        finally:
            door.MORE_PRECISE_TRIES = saved
        circuit = module.fhe_circuit
        circuit.keygen(force=True)
        module.forward(X_test[:1], fhe="execute")  # one-off set-up after key generation
        modules[label] = module
        results[label] = {"p_error_compiled": module._compile_inputs[2]["p_error"],
                          "complexity": float(circuit.statistics["complexity"]),
                          "predicted_s_per_sample": round(module.cost().seconds_per_sample, 2),
                          "simulate_correct": int((module.forward(X_test, fhe="simulate").argmax(1) == y_test).sum()),
                          "execute_s_each": []}
        log(f"{label}: {results[label]}")
    for i in range(1, PAIRS + 1):
        for label in ("before", "after"):
            start = time.perf_counter()
            modules[label].forward(X_test[i : i + 1], fhe="execute")
            results[label]["execute_s_each"].append(round(time.perf_counter() - start, 2))
        log(f"pair {i}: {results['before']['execute_s_each'][-1]} / {results['after']['execute_s_each'][-1]}")
    for label in ("before", "after"):
        results[label]["execute_s_per_sample"] = round(float(np.median(results[label]["execute_s_each"])), 2)
    ratios = [a / b for a, b in zip(results["after"]["execute_s_each"], results["before"]["execute_s_each"])]
    results["after_vs_before_paired"] = {"ratios": [round(r, 3) for r in ratios],
                                         "median": round(float(np.median(ratios)), 3),
                                         "predicted": round(results["after"]["predicted_s_per_sample"]
                                                            / results["before"]["predicted_s_per_sample"], 3)}
    results["load_average_1min"] = round(os.getloadavg()[0], 2)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
