"""Calibrate the FHE cost model on this machine: ``QuantizedModule.cost()`` then predicts its times.

Compiles a handful of small torch MLPs of different widths, bit-widths and rounding (so
different bootstrap counts and key parameters), generates their keys and times key
generation and encrypted samples (median of ``--repeats`` one-sample runs after an
untimed one), fits the cost model's coefficients (``fheestimators.fhe.cost``) and writes
them where ``cost()`` reads them: ``$FHEESTIMATORS_COST_MODEL`` or
``~/.cache/fheestimators/cost_model.json`` (``--output`` to choose). Run it on an idle
machine: other processes slow every timing down. About 2 minutes on 2 cores.

Run: ``python benchmarks/calibrate_cost.py [--output PATH] [--no-save] > calibration.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine, median_execute_s, stopwatch  # noqa: E402

from fheestimators import compile_torch_model  # noqa: E402
from fheestimators.quantization.tabulate import tabulation_limit  # noqa: E402
from fheestimators.fhe.cost import CircuitWork, DEFAULT_COST_MODEL, estimate_cost, fit_cost_model  # noqa: E402

# (name, layer widths, n_bits, rounding, p_error): 3- to 8-bit lookups, polynomials of 512 to
# 8192, 8 to a few hundred bootstraps, one and several parameter sets
CIRCUITS = [
    ("2-8-2, 2 bits", [2, 8, 2], 2, None, None),
    ("2-16-2, 3 bits", [2, 16, 2], 3, None, None),
    ("2-32-32-2, round 4", [2, 32, 32, 2], 4, {"n_bits": 4, "method": "approximate"}, None),
    ("2-32-32-2, round 4 exact", [2, 32, 32, 2], 4, {"n_bits": 4, "method": "exact"}, None),
    ("8-64-2, round 6, p 0.1", [8, 64, 2], 6, {"n_bits": 6, "method": "approximate"}, 0.1),
    ("8-32-32-2, round 7, p 0.3", [8, 32, 32, 2], 6, {"n_bits": 7, "method": "approximate"}, 0.3),
    ("2-24-16-2, round 8, p 0.3", [2, 24, 16, 2], 6, {"n_bits": 8, "method": "approximate"}, 0.3),
    ("4-96-2, round 8, p 0.3", [4, 96, 2], 6, {"n_bits": 8, "method": "approximate"}, 0.3),
    ("2-24-16-2, round 8, p 0.05", [2, 24, 16, 2], 6, {"n_bits": 8, "method": "approximate"}, 0.05),
    # concrete's strict default p_error: 7-bit lookups on polynomials of 16384
    ("8-32-2, round 7, default p_error", [8, 32, 2], 6, {"n_bits": 7, "method": "approximate"}, None),
    # 2 inputs of 3 bits: tabulated, two 6-bit lookups, as the specification's QAT network
    ("2-16-2, 3 bits, tabulated", [2, 16, 2], 3, None, None),
]


def mlp(widths: list[int]) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(widths) - 2 else [])
    return torch.nn.Sequential(*layers).eval()


def measure(name: str, widths: list[int], n_bits: int, rounding, p_error, repeats: int) -> dict:
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(300, widths[0])).astype(np.float32)
    # the per-neuron circuits, whatever the inputs' few values, but for the tabulated one
    with tabulation_limit(64 if name.endswith("tabulated") else 0):
        module = compile_torch_model(mlp(widths), X, n_bits=n_bits, rounding_threshold_bits=rounding, p_error=p_error)
    circuit = module.fhe_circuit
    with stopwatch() as keygen:
        circuit.keygen(force=True)
    keygen_s = keygen.wall
    execute_s, execute_cpu_s = median_execute_s(module, X, repeats)
    cost = estimate_cost(circuit, DEFAULT_COST_MODEL)
    row = {"name": name, **asdict(CircuitWork.of(circuit)), "bootstrap_keys": cost.bootstrap_keys,
           "keygen_s": round(keygen_s, 3), "execute_s": round(execute_s, 4),
           "keygen_cpu_s": round(keygen.cpu, 3), "execute_cpu_s": round(execute_cpu_s, 4),
           "load_average_1min": machine()["load_average_1min"]}
    circuit.cleanup()
    log(f"{name}: {cost.programmable_bootstraps} PBS {cost.bootstrap_keys}, keygen {keygen_s:.2f} s, "
        f"execute {execute_s:.3f} s")
    return row


def relative_errors(model, rows: list[dict]) -> list[dict]:
    errors = []
    for row in rows:
        work = CircuitWork(**{k: row[k] for k in CircuitWork.__dataclass_fields__})
        errors.append({"name": row["name"],
                       "execute_error": round(model.execute_seconds(work) / row["execute_s"] - 1, 3),
                       "keygen_error": round(model.keygen_seconds(work) / row["keygen_s"] - 1, 3)})
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="calibration file (default: where cost() reads it)")
    parser.add_argument("--no-save", action="store_true", help="print the fit, write nothing")
    parser.add_argument("--repeats", type=int, default=3, help="timed one-sample runs per circuit")
    args = parser.parse_args()
    rows = [measure(*circuit, args.repeats) for circuit in CIRCUITS]
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), **machine(), "circuits": len(rows)}
    model = fit_cost_model(rows, info)
    info["fit_errors"] = relative_errors(model, rows)
    path = None if args.no_save else model.save(args.output)
    print(json.dumps({"machine": machine(), "saved_to": str(path) if path else None,
                      "coefficients": {k: v for k, v in asdict(model).items() if k not in ("source", "info")},
                      "fit_errors": info["fit_errors"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
