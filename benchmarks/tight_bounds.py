"""TinyCNN compiled by two versions of the code, same run: widths, bootstraps, cost, simulated accuracy.

First written for the clip box's values sized by interval rules (before) or by symbolic
linear bounds intersected with them (after); it serves any change to the TinyCNN's
compilation. The network and its training are ``tiny_cnn.py``'s (seeds 0 to 3: each its
own split); no encrypted execution (``tiny_cnn.py`` times it). Reported per version and
seed: torch, ``disable`` and ``simulate`` accuracy on the 450 test images (``simulate``:
mean over ``RANDOM_STATES`` draws of the bootstraps' mistakes), each lookup input's
bit-width over the box, the circuit's largest bit-width, bootstraps, complexity, the cost
model's seconds per sample, the ``p_error`` the circuit was compiled at (the user's is 0.1)
and compile seconds.

Run: ``python benchmarks/tight_bounds.py [--before REF] > benchmarks/results_tight_bounds.json``
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
from _versions import compare, parser as versions_parser  # noqa: E402

SEEDS = (0, 1, 2, 3)
RANDOM_STATES = 6


def one_version(weights_dir: str) -> dict:
    import torch

    from fheestimators.quantization.bounds import bit_width
    from fheestimators.torch.compile import compile_torch_model

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = {}
    for seed in SEEDS:
        tiny_cnn.SEED = seed
        X_train, X_test, _, y_test = tiny_cnn.digits()
        net = tiny_cnn.tiny_cnn()
        net.load_state_dict(torch.load(str(Path(weights_dir) / f"seed{seed}.pt")))
        net.eval()
        with torch.no_grad():
            result: dict = {"torch_correct": int((net(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).sum())}
        start = time.perf_counter()
        module = compile_torch_model(net, X_train, rounding_threshold_bits=6, p_error=0.1)
        result["compile_s"] = round(time.perf_counter() - start, 2)
        result["disable_correct"] = int((module.forward(X_test).argmax(1) == y_test).sum())
        result["simulate_correct_mean"] = float(np.mean([
            (module.forward(X_test, fhe="simulate", random_state=state).argmax(1) == y_test).sum()
            for state in range(RANDOM_STATES)]))
        program = module.program
        result["lookup_input_bits"] = [bit_width(*program.value_bounds[step.inputs[0]])
                                       for step in program.table_lookups]
        circuit = module.fhe_circuit
        result["max_bit_width"] = int(circuit.graph.maximum_integer_bit_width())
        result["programmable_bootstraps"] = int(circuit.programmable_bootstrap_count)
        result["complexity"] = float(circuit.statistics["complexity"])
        result["predicted_s_per_sample"] = round(module.cost().seconds_per_sample, 2)
        result["p_error_compiled"] = module._compile_inputs[2]["p_error"]
        result["load_average_1min"] = round(os.getloadavg()[0], 2)
        log(f"seed {seed}: {result}")
        results[f"seed{seed}"] = result
    return results


def main(argv=None) -> None:
    parser = versions_parser(__doc__, metavar="WEIGHTS_DIR", help="measure the imported code on these weights")
    args = parser.parse_args(argv)
    if args.one_version:
        print(json.dumps(one_version(args.one_version)))
        return
    with tempfile.TemporaryDirectory(prefix="tight-bounds-") as tmp:
        for seed in SEEDS:
            tiny_cnn.SEED = seed
            tiny_cnn.train(str(Path(tmp) / f"seed{seed}.pt"))
        results = compare(__file__, [tmp], args.before)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
