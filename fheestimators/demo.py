"""The main job: train on the checkerboard, compile, predict encrypted, print accuracy and latency.

Run with ``python -m fheestimators.demo`` (``--help`` for options).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from .datasets import make_checkerboard
from .torch.compile import compile_torch_model


class MLP(nn.Module):
    """A small fully connected network for 2-D points."""

    def __init__(self, n_hidden: int = 20):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_hidden),
                                    nn.ReLU(), nn.Linear(n_hidden, 2))

    def forward(self, x):
        return self.layers(x)


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(epochs):
        for batch in torch.randperm(len(X_t)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X_t[batch]), y_t[batch]).backward()
            optimizer.step()
    return model.eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--n-bits", type=int, default=6)
    parser.add_argument("--rounding-bits", type=int, default=6)
    parser.add_argument("--rounding-method", choices=["exact", "approximate"], default="exact")
    parser.add_argument("--fhe-samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    X_train, X_test, y_train, y_test = make_checkerboard(random_state=args.seed)
    torch.manual_seed(args.seed)
    model = train(MLP(args.hidden), X_train, y_train, args.epochs, args.seed)
    with torch.no_grad():
        float_acc = float((model(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean())

    start = time.perf_counter()
    module = compile_torch_model(model, X_train, n_bits=args.n_bits,
                                 rounding_threshold_bits={"n_bits": args.rounding_bits, "method": args.rounding_method})
    compile_s = time.perf_counter() - start
    print(module.report())

    results = {"float_accuracy": float_acc, "compile_s": round(compile_s, 3)}
    for mode in ("disable", "simulate"):
        start = time.perf_counter()
        pred = module.forward(X_test, fhe=mode).argmax(1)
        results[f"{mode}_accuracy"] = float((pred == y_test).mean())
        results[f"{mode}_s_500"] = round(time.perf_counter() - start, 4)

    start = time.perf_counter()
    module.fhe_circuit.keygen()
    results["keygen_s"] = round(time.perf_counter() - start, 3)
    n = args.fhe_samples
    start = time.perf_counter()
    fhe_pred = module.forward(X_test[:n], fhe="execute", progress=True).argmax(1)
    results["execute_s_per_sample"] = round((time.perf_counter() - start) / n, 3)
    results["execute_accuracy_on_samples"] = float((fhe_pred == y_test[:n]).mean())
    results["execute_matches_simulate"] = bool(np.array_equal(
        fhe_pred, module.forward(X_test[:n], fhe="simulate").argmax(1)))
    results["programmable_bootstraps"] = module.fhe_circuit.programmable_bootstrap_count
    results["max_bit_width"] = module.fhe_circuit.graph.maximum_integer_bit_width()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
