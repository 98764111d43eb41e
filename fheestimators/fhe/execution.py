"""Encrypted execution and batched simulation of a compiled circuit."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist
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
    """The bootstrap's noise, drawn the way it acts in FHE: on the position the table is read at.

    A bootstrap reads its input to the nearest table entry after Gaussian noise is added;
    concrete-python sizes that noise so that an input *on* an entry lands on a neighbour
    with probability ``p_error``: in units of entries, the noise's standard deviation is
    ``0.5 / z`` with ``z`` the normal quantile of ``1 - p_error / 2``.

    - Exact rounding (or none) puts the input on an entry: it is off by one entry with
      probability ``p_error``.
    - Approximate rounding (``round_bit_pattern`` with ``Exactness.APPROXIMATE``) keeps
      the removed bits in the ciphertext: the input sits anywhere between two entries,
      and one near the middle goes either way. This is far more frequent than
      ``p_error``: at ``p_error=0.02`` about 17% of the lookups read the other entry
      (17.0% of 1,920 lookups in concrete-python's encrypted runs, 4 bits removed).
      The middle is half an accumulator unit below where rounding half up turns
      (concrete-python's encoding), and that is where the draw puts it.

    Values beyond the bit-width concrete chose for a lookup wrap around as they would
    in FHE. With exact rounding and a negligible ``p_error`` the simulation equals the
    clear run.
    """

    def __init__(self, p_error: float, bit_widths: Optional[dict[str, int]] = None, seed: Optional[int] = None):
        self.p_error = float(p_error)
        # the noise's standard deviation, in table entries
        self.sigma = 0.5 / -NormalDist().inv_cdf(self.p_error / 2) if self.p_error > 0 else 0.0
        self.bit_widths = dict(bit_widths or {})
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_circuit(cls, circuit: fhe.Circuit, seed: Optional[int] = None) -> "LookupNoise":
        """The noise of ``circuit``'s bootstraps, with the bit-width of each lookup's input."""
        bit_widths: dict[str, int] = {}
        for node in circuit.graph.query_nodes(custom_filter=lambda n: n.converted_to_table_lookup):
            preds = circuit.graph.ordered_preds_of(node)
            width = max((p.output.dtype.bit_width for p in preds if p.output.is_encrypted), default=None)
            if width is not None:
                bit_widths[node.tag] = max(bit_widths.get(node.tag, 0), width)
        return cls(circuit.p_error, bit_widths, seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, step, x: np.ndarray) -> np.ndarray:
        """The rounded input the table reads, from the lookup's spread input ``x``."""
        unit = 1 << step.lsbs_to_remove
        if unit > 1 and step.exactness == "approximate":
            # the removed bits stay: the position is between entries
            position = (x + unit // 2 + 0.5) / unit
        else:
            position = step.round(x) // unit + 0.5
        if self.sigma > 0:
            position = position + self.sigma * self.rng.standard_normal(np.shape(x))
        x = np.floor(position).astype(np.int64) * unit
        width = self.bit_widths.get(step.name)
        if width is not None:
            low, high = step.input_bounds
            if low < 0:
                half = 1 << (width - 1)
                x = (x + half) % (1 << width) - half
            else:
                x = x % (1 << width)
        return x
