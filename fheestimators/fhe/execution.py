"""Encrypted execution and batched simulation of a compiled circuit."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from concrete import fhe
from tqdm.auto import tqdm


def ensure_keys(circuit: fhe.Circuit, verbose: bool = False) -> None:
    """Generate keys once (they are kept in the circuit)."""
    if circuit.keys is None or not circuit.keys.are_generated:
        if verbose:
            print("Generating FHE keys...", flush=True)
        circuit.keygen()


def run_encrypted(circuit: fhe.Circuit, inputs: Sequence[np.ndarray], progress: bool = False,
                  n_workers: Optional[int] = None):
    """Encrypt, run and decrypt sample by sample: a circuit has the shape of one sample.

    Samples run in ``n_workers`` threads (default: one per core). concrete-python's
    runtime releases the GIL, so a batch keeps every core busy.
    """
    ensure_keys(circuit, verbose=progress)
    n_samples = inputs[0].shape[0]
    workers = max(1, min(n_workers or os.cpu_count() or 1, n_samples))

    def one(i: int):
        result = circuit.encrypt_run_decrypt(*(x[i : i + 1] for x in inputs))
        return result if isinstance(result, tuple) else (result,)

    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(one, range(n_samples)), total=n_samples, desc="FHE execution",
                            disable=not progress, unit="sample"))
    stacked = tuple(np.concatenate([r[k] for r in results], axis=0) for k in range(len(results[0])))
    return stacked if len(stacked) > 1 else stacked[0]


class LookupNoise:
    """Simulated bootstrap errors: an input off by one step, with the circuit's p_error.

    Values beyond the bit-width concrete chose for a lookup wrap around as they
    would in FHE. With a negligible p_error the simulation equals the clear run.
    """

    def __init__(self, circuit: fhe.Circuit, seed: int | None = None):
        self.p_error = float(circuit.p_error)
        self.rng = np.random.default_rng(seed)
        self.bit_widths = {}
        for node in circuit.graph.query_nodes(custom_filter=lambda n: n.converted_to_table_lookup):
            preds = circuit.graph.ordered_preds_of(node)
            width = max((p.output.dtype.bit_width for p in preds if p.output.is_encrypted), default=None)
            if width is not None:
                self.bit_widths[node.tag] = max(self.bit_widths.get(node.tag, 0), width)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, step, x: np.ndarray) -> np.ndarray:
        width = self.bit_widths.get(step.name)
        if width is not None:
            low, high = step.input_bounds
            if low < 0:
                half = 1 << (width - 1)
                x = (x + half) % (1 << width) - half
            else:
                x = x % (1 << width)
        if self.p_error > 0:
            flips = self.rng.random(x.shape) < self.p_error
            if flips.any():
                unit = 1 << step.lsbs_to_remove
                x = x + flips * self.rng.choice([-unit, unit], size=x.shape)
        return x
