"""Compile time against inputset size: the specification's QAT network on the checkerboard.

``QATPrunedSimpleNet`` (100 hidden, 20 non-zero weights per neuron, 3 bits, 7 epochs)
compiled with ``compile_brevitas_qat_model(model, inputset)`` and its defaults, on
inputsets of 1,000, 9,500 (the training set) and 100,000 points of the same board.
Each size is compiled twice in the same run: as shipped (concrete-python traces only
the inputset's bounding rows) and tracing every row, as before; the JSON says whether
both circuits are the same (MLIR and every node's bounds) and where the time goes.

The network's 2 inputs of 3 bits take few combinations, so it compiles tabulated (one
lookup per output, traced on every combination: ``results_compile_time_tabulated.json``);
``--untabulated`` compiles it per neuron, as before (``results_compile_time.json``).

Run: ``python benchmarks/compile_time.py > results.json`` (``--sizes 1000`` for a smoke run).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from contextlib import contextmanager

import numpy as np

from _measure import log, machine
from _networks import QATPrunedSimpleNet, train
from fheestimators.datasets import fresh_board_points, make_checkerboard
from fheestimators.fhe import compiler as fhe_compiler
from fheestimators.quantization import inputset as selection
from fheestimators.quantization.tabulate import tabulation_limit
from fheestimators.torch.compile import compile_brevitas_qat_model


@contextmanager
def every_row():
    """Trace every row of the inputset, as concrete-python does on its own."""
    saved = selection.MIN_ROWS_TO_SELECT
    selection.MIN_ROWS_TO_SELECT = 10**12
    try:
        yield
    finally:
        selection.MIN_ROWS_TO_SELECT = saved


@contextmanager
def timed_concrete(times: list):
    """Time concrete-python's part (tracing, bounds, MLIR and crypto-parameters) apart."""
    original = fhe_compiler.compile_function

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    import fheestimators.quantization.module as module_file
    module_file.compile_function = timed
    try:
        yield
    finally:
        module_file.compile_function = original


def compile_once(model, inputset) -> dict:
    times: list = []
    with timed_concrete(times):
        start = time.perf_counter()
        module = compile_brevitas_qat_model(model, inputset)
        total = time.perf_counter() - start
    circuit = module.fhe_circuit
    return {
        "module": module,
        "compile_s": round(total, 2),
        "concrete_s": round(sum(times), 2),
        "traced_rows": len(module._compile_inputs[0]),
        "programmable_bootstraps": circuit.programmable_bootstrap_count,
        "max_bit_width": circuit.graph.maximum_integer_bit_width(),
    }


def same_circuit(a, b) -> bool:
    nodes = [[(str(n.output), n.bounds) for n in m.fhe_circuit.graph.graph.nodes] for m in (a, b)]
    return nodes[0] == nodes[1] and a.fhe_circuit.mlir == b.fhe_circuit.mlir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,9500,100000", help="inputset sizes, comma-separated")
    parser.add_argument("--untabulated", action="store_true",
                        help="compile one lookup per neuron, as before tabulation (results_compile_time.json)")
    args = parser.parse_args()
    with tabulation_limit(0) if args.untabulated else contextlib.nullcontext():
        rows = measure(args.sizes)
    print(json.dumps({"machine": machine(), "tabulated": not args.untabulated, "rows": rows}, indent=2))


def measure(sizes: str) -> list[dict]:

    X_train, _, y_train, _ = make_checkerboard()
    log("QATPrunedSimpleNet(100), 20 non-zero: training 7 epochs")
    model = train(QATPrunedSimpleNet(100), X_train, y_train, epochs=7, max_non_zero=20)
    # new noisy copies of the same board for the large inputsets
    pool = np.concatenate([X_train, fresh_board_points(n_draws=10)[0]])
    rows = []
    for size in (int(s) for s in sizes.split(",")):
        inputset = X_train if size == len(X_train) else pool[:size]
        log(f"inputset of {size}: bounding rows")
        selected = compile_once(model, inputset)
        log(f"inputset of {size}: every row")
        with every_row():
            whole = compile_once(model, inputset)
        same = same_circuit(selected.pop("module"), whole.pop("module"))
        rows.append({"inputset": size, "bounding_rows": selected, "every_row": whole,
                     "speedup": round(whole["compile_s"] / selected["compile_s"], 2), "same_circuit": same})
    return rows


if __name__ == "__main__":
    main()
