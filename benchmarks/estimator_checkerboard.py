"""NeuralNetClassifier defaults on the checkerboard data: accuracy and FHE costs as JSON.

Run: ``python benchmarks/estimator_checkerboard.py [--fhe-samples 2] [--seed 0] [--throughput-samples 20]``
(``benchmarks/checkerboard.py`` runs the same measurement beside the specification's tables).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import benchmark_estimator, machine  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fhe-samples", type=int, default=2, help="samples run encrypted for the latency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput-samples", type=int, default=20,
                        help="samples of one encrypted predict call for the throughput (0: skip)")
    parser.add_argument("--throughput-budget", type=float, default=300.0,
                        help="lower the throughput samples so that call lasts about this many seconds")
    parser.add_argument("--torch-threads", type=int, default=1, help="tiny networks train fastest on one thread")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    results, _, _ = benchmark_estimator(seed=args.seed, fhe_samples=args.fhe_samples,
                                        throughput_samples=args.throughput_samples,
                                        throughput_budget_s=args.throughput_budget)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
