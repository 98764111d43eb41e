"""The reference system's CNN example on this code: TinyCNN on 8x8 digits, before and after a change, same run.

TinyCNN: ``Conv2d(1, 8, 3)`` (8x8 -> 6x6), ReLU, ``Conv2d(8, 16, 3, stride=2)`` (-> 2x2),
ReLU, ``Conv2d(16, 32, 2)`` (-> 1x1), ReLU, flatten, ``Linear(32, 10)``; trained in float
torch for 150 epochs (seeded) on a 75/25 split of ``load_digits`` (450 test images). The
network is trained once and its weights shared by both versions, which compile it with the
user's call ``compile_torch_model(net, x_train, rounding_threshold_bits=6, p_error=0.1)``.
Reported per version: torch, ``disable`` and ``simulate`` accuracy on the 450 test images,
bootstraps, the bootstrap keys' parameters, the cost model's seconds per sample, the
``p_error`` the circuit was compiled at, compile and key generation seconds, and the
median seconds per encrypted sample (after one untimed run).

Run: ``python benchmarks/tiny_cnn.py [--before REF] > benchmarks/results_tiny_cnn.json``
(a few minutes per version on 2 cores).
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
from _measure import log, machine  # noqa: E402
from _versions import compare, parser as versions_parser  # noqa: E402

EPOCHS = 150
SEED = 0
EXECUTED_SAMPLES = 3
# the reference system on this machine (its own example, measured before this benchmark, at a
# low load), and eaf3b0d measured then: absolute seconds compare only at the same load
REFERENCE = {"execute_s_per_sample": 62.8, "programmable_bootstraps": 4992, "keygen_s": 6.7,
             "simulate_accuracy": 0.9822, "eaf3b0d_execute_s_per_sample": 11.6}


def tiny_cnn():
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
            self.conv3 = nn.Conv2d(16, 32, 2)
            self.fc1 = nn.Linear(32, 10)

        def forward(self, x):
            x = self.conv3(self.conv2(self.conv1(x).relu()).relu()).relu()
            return self.fc1(x.flatten(1))

    return TinyCNN()


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X.reshape(-1, 1, 8, 8).astype(np.float32), y, test_size=0.25, random_state=SEED)


def train(path: str) -> None:
    """150 epochs of Adam on mini-batches of 64, seeded; the weights go to ``path``."""
    import torch

    X_train, _, y_train, _ = digits()
    torch.set_num_threads(1)  # a small network trains fastest on one thread
    torch.manual_seed(SEED)
    net = tiny_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(X_train), torch.from_numpy(y_train).long()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss(net(x[batch]), y[batch]).backward()
            optimizer.step()
    torch.save(net.state_dict(), path)


def one_version(weights: str) -> dict:
    import torch

    from fheestimators.torch.compile import compile_torch_model

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    X_train, X_test, _, y_test = digits()
    net = tiny_cnn()
    net.load_state_dict(torch.load(weights))
    net.eval()
    with torch.no_grad():
        result: dict = {"torch_accuracy": float((net(torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean())}
    start = time.perf_counter()
    module = compile_torch_model(net, X_train, rounding_threshold_bits=6, p_error=0.1)
    result["compile_s"] = round(time.perf_counter() - start, 2)
    for mode in ("disable", "simulate"):
        result[f"{mode}_accuracy"] = float((module.forward(X_test, fhe=mode).argmax(1) == y_test).mean())
    circuit = module.fhe_circuit
    statistics = circuit.statistics
    result["programmable_bootstraps"] = int(circuit.programmable_bootstrap_count)
    result["bootstrap_keys"] = [
        {"n": key.input_lwe_dimension(), "N": key.polynomial_size(), "k": key.glwe_dimension(),
         "level": key.level(), "base_log": key.base_log(), "bootstraps": int(count)}
        for key, count in statistics["programmable_bootstrap_count_per_parameter"].items()]
    result["complexity"] = float(statistics["complexity"])
    result["predicted_s_per_sample"] = round(module.cost().seconds_per_sample, 2)
    result["p_error_compiled"] = module._compile_inputs[2]["p_error"]
    result["evaluation_keys_mb"] = round((circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys) / 2**20, 1)
    result["max_bit_width"] = int(circuit.graph.maximum_integer_bit_width())
    start = time.perf_counter()
    circuit.keygen(force=True)
    result["keygen_s"] = round(time.perf_counter() - start, 2)
    module.forward(X_test[:1], fhe="execute")  # the first run after key generation pays one-off set-up
    seconds, agree = [], []
    for i in range(1, EXECUTED_SAMPLES + 1):
        start = time.perf_counter()
        executed = module.forward(X_test[i : i + 1], fhe="execute")
        seconds.append(time.perf_counter() - start)
        agree.append(int(executed.argmax(1)[0] == module.forward(X_test[i : i + 1]).argmax(1)[0]))
    result["execute_s_per_sample"] = round(float(np.median(seconds)), 2)
    result["execute_s_each"] = [round(s, 2) for s in seconds]
    result["execute_agrees_with_disable"] = agree
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    log(f"{result}")
    return result


def main(argv=None) -> None:
    parser = versions_parser(__doc__, metavar="WEIGHTS", help="measure the imported code on these weights only")
    args = parser.parse_args(argv)
    if args.one_version:
        print(json.dumps(one_version(args.one_version)))
        return
    with tempfile.TemporaryDirectory(prefix="tiny-cnn-") as tmp:
        weights = str(Path(tmp) / "tiny_cnn.pt")
        start = time.perf_counter()
        train(weights)
        log(f"trained in {time.perf_counter() - start:.1f} s")
        results = compare(__file__, [weights], args.before)
    results["machine"] = machine()
    print(json.dumps(summarize(results), indent=2))


def summarize(results: dict) -> dict:
    """The same-run speed-up, and what it makes of eaf3b0d's seconds measured with the reference's."""
    ratio = results["before"]["execute_s_per_sample"] / results["after"]["execute_s_per_sample"]
    projected = REFERENCE["eaf3b0d_execute_s_per_sample"] / ratio
    results["reference_system"] = REFERENCE
    results["speedup"] = {"after_vs_before": round(ratio, 2),
                          "after_projected_s_per_sample_at_reference_load": round(projected, 2),
                          "after_projected_vs_reference": round(REFERENCE["execute_s_per_sample"] / projected, 1)}
    return results


if __name__ == "__main__":
    main()
