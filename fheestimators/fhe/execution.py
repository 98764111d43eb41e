"""Encrypted execution and batched simulation of a compiled circuit."""
from __future__ import annotations

import hashlib
import os
import re
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

    - No rounding puts the input on an entry: it is off by one entry with probability
      ``p_error``.
    - Exact rounding (``Exactness.EXACT``) puts it on an entry too, but concrete-python
      removes the ``r`` bits with ``r`` bootstraps of its own before the table's, and each
      can err (``_exactly_rounded``): with 4 bits removed at ``p_error=0.05``, 9.2% of 768
      encrypted reads were off by one entry, and 9.7% are drawn, not 5%.
    - Approximate rounding (``round_bit_pattern`` with ``Exactness.APPROXIMATE``) keeps
      the removed bits in the ciphertext: the input sits anywhere between two entries,
      and one near the middle goes either way. This is far more frequent than
      ``p_error``: at ``p_error=0.02`` about 17% of the lookups read the other entry
      (17.0% of 1,920 lookups in concrete-python's encrypted runs, 4 bits removed).
      The middle sits ``2**(w - 1) / N`` accumulator units below rounding half up's
      (``w`` the accumulator's width in the circuit, ``N`` the bootstrap's polynomial size):
      concrete-python adds just under half a unit before the read, and the bootstrap,
      which reads one of ``2 * N`` positions, gives the next entry from the first position
      of its half, half a position early (``middle_shifts``; design-notes).

    Values beyond the bit-width concrete chose for a lookup wrap around as they would
    in FHE. With exact rounding and a negligible ``p_error`` the simulation equals the
    clear run.
    """

    def __init__(self, p_error: float, bit_widths: Optional[dict[str, int]] = None, seed: Optional[int] = None,
                 middle_shifts: Optional[dict[str, float]] = None):
        self.p_error = float(p_error)
        # the noise's standard deviation, in table entries
        self.sigma = 0.5 / -NormalDist().inv_cdf(self.p_error / 2) if self.p_error > 0 else 0.0
        self.bit_widths = dict(bit_widths or {})
        #: per approximately rounded lookup, how far (accumulator units) below rounding half up's
        #: middle the bootstrap's noise sends a value to either entry
        self.middle_shifts = dict(middle_shifts or {})
        self.reseed(seed)
        self._row_keys: Optional[np.ndarray] = None

    @classmethod
    def from_circuit(cls, circuit: fhe.Circuit, seed: Optional[int] = None) -> "LookupNoise":
        """The noise of ``circuit``'s bootstraps, with the bit-width of each table's input.

        Each lookup has a tag of its own (``step.tag``); within it, exact rounding adds
        bootstraps of its own on the wider accumulator, so only the table read counts.
        A rounded value wraps at the width it was traced (or hinted) with, even when
        concrete-python carries it on more bits: it scales it up to the wider type first.
        An approximately rounded lookup's middle shift comes from the width of the
        ciphertext it reads and the polynomial size of its bootstrap key.
        """
        bit_widths: dict[str, int] = {}
        middle_shifts: dict[str, float] = {}
        polynomial_size = _polynomial_sizes(circuit)
        symmetrized = circuit.configuration.approximate_rounding_config.symetrize_deltas
        default_exactness = circuit.configuration.rounding_exactness
        for node in circuit.graph.query_nodes(custom_filter=lambda n: n.converted_to_table_lookup):
            if node.properties.get("name") == "round_bit_pattern":
                continue
            preds = circuit.graph.ordered_preds_of(node)
            width = max((p.properties.get("original_bit_width", p.output.dtype.bit_width)
                         if p.properties.get("name") == "round_bit_pattern" else p.output.dtype.bit_width
                         for p in preds if p.output.is_encrypted), default=None)
            if width is not None:
                bit_widths[node.tag] = max(bit_widths.get(node.tag, 0), width)
            for rounding in preds:
                if (rounding.properties.get("name") == "round_bit_pattern" and polynomial_size(node.tag)
                        and (rounding.properties.get("exactness") or default_exactness) == fhe.Exactness.APPROXIMATE):
                    # half a position of the 2 N the bootstrap reads; concrete-python's half unit offsets the other half
                    shift = 2 ** (_encoded_width(circuit, rounding) - 1) / polynomial_size(node.tag)
                    middle_shifts[node.tag] = shift if symmetrized else shift - 0.5
                    break
        return cls(circuit.p_error, bit_widths, seed, middle_shifts)

    def reseed(self, seed: Optional[int]) -> None:
        sequence = np.random.SeedSequence(seed)
        self.rng = np.random.default_rng(sequence)  # the same draws as default_rng(seed)
        # exact rounding's bootstraps draw from a stream of their own: the other draws stay as they were
        self._rounding_rng = np.random.default_rng(sequence.spawn(1)[0])

    def for_rows(self, q_inputs: Sequence[np.ndarray], random_state: int = 0) -> "LookupNoise":
        """Draw from the rows' own values: a row gets the same draws wherever it stands in a batch.

        Without it, draws come from one generator in batch order (``reseed``).
        """
        self._row_keys = _row_keys(q_inputs, random_state)
        return self

    @np.errstate(over="ignore")
    def _standard_normal(self, step, shape: tuple, bootstrap: str = "") -> np.ndarray:
        """One draw per element for the table's bootstrap, or for the one named ``bootstrap``."""
        if self._row_keys is None or shape[0] != len(self._row_keys):
            return (self._rounding_rng if bootstrap else self.rng).standard_normal(shape)
        elements = np.arange(int(np.prod(shape[1:], dtype=np.int64)), dtype=np.uint64)
        keys = _mix(self._row_keys[:, None] ^ _mix(np.uint64(_string_key(step.tag + bootstrap)) + elements * _GOLDEN))
        return _gaussian(keys).reshape(shape)

    def _exactly_rounded(self, step, x: np.ndarray) -> np.ndarray:
        """``x`` rounded as concrete-python's exact rounding does it in FHE, mistakes included.

        concrete-compiler lowers it (``RoundEintOpPattern``, FHE to TFHE) to: add half a
        unit, then clear the ``r`` removed bits from the lowest up, one bootstrap each: bit
        ``i`` is multiplied onto the padding bit, a bootstrap with a constant table reads
        which half of the torus it is in (a quarter turn from either edge), and the bit read
        is subtracted. A mistake leaves ``2**i`` in the value or takes ``2**i`` that was not
        there: either way bit ``i`` stays set, which puts the next bit's bootstrap on its
        edge (it goes either way) and the table's input between two entries. Without
        mistakes this is ``step.round(x)``.
        """
        v = np.asarray(x, dtype=np.int64) + (1 << (step.lsbs_to_remove - 1))
        for i in range(step.lsbs_to_remove):
            # in turns: bit i at 1/2, the bits below it (left by earlier mistakes) under it
            turn = (v & ((2 << i) - 1)) / (2 << i) + 0.25
            # each errs at the p_error bound: how often each really does depends on keys (design-notes)
            # a quarter turn is half an entry's margin: the same z, half the standard deviation
            turn = turn + self.sigma / 2 * self._standard_normal(step, np.shape(v), f"/bit{i}")
            v = v - ((np.floor(2 * turn).astype(np.int64) & 1) << i)
        return v

    def __call__(self, step, x: np.ndarray) -> np.ndarray:
        """The rounded input the table reads, from the lookup's spread input ``x``."""
        unit = 1 << step.lsbs_to_remove
        if unit > 1 and step.exactness == "approximate":
            # the removed bits stay: the position is between entries; without noise, rounding half up's
            shift = self.middle_shifts.get(step.tag, 0.0) if self.sigma > 0 else 0.0
            position = (x + unit // 2 + 0.5 + shift) / unit
        elif unit > 1 and self.sigma > 0:
            # exact rounding's own bootstraps may leave the value between entries
            position = self._exactly_rounded(step, x) / unit + 0.5
        else:
            position = step.round(x) // unit + 0.5
        if self.sigma > 0:
            position = position + self.sigma * self._standard_normal(step, np.shape(x))
        x = np.floor(position).astype(np.int64) * unit
        width = self.bit_widths.get(step.tag)
        if width is not None:
            low, high = step.input_bounds
            if low < 0:
                half = 1 << (width - 1)
                x = (x + half) % (1 << width) - half
            else:
                x = x % (1 << width)
        return x


def _encoded_width(circuit: fhe.Circuit, rounding) -> int:
    """The width of the ciphertext an approximately rounded lookup reads: its accumulator's,
    or, when concrete-python carries the accumulator on more bits, the width it scales it back to."""
    accumulator = circuit.graph.ordered_preds_of(rounding)[0]
    carried = accumulator.output.dtype.bit_width
    original = accumulator.properties.get("original_bit_width", carried)
    if carried == original:
        return carried
    protected = rounding.properties.get("overflow_protection") and rounding.properties.get("overflow_detected")
    return original + 1 if protected else original


def _polynomial_sizes(circuit: fhe.Circuit):
    """``tag -> N``, the polynomial size of the bootstrap key a lookup's table is read with."""
    keys = circuit.client.specs.program_info.get_keyset_info().bootstrap_keys()
    sizes = {key.polynomial_size() for key in keys}
    if len(sizes) == 1:
        size = sizes.pop()
        return lambda tag: size
    per_tag: dict[str, int] = {}
    try:
        # several parameter sets: the compiler's feedback names each bootstrap's key and tag (in its
        # location; concrete-python's own per-tag statistics drop tags with '/' or '#', as ours have)
        from concrete.compiler import KeyType, PrimitiveOperation

        feedback = circuit.server._library.get_program_compilation_feedback()
        for function in circuit.client.specs.program_info.function_list():
            for statistic in feedback.get_circuit_feedback(function).statistics:
                found = re.match(r'loc\("@(.*?) \| ', statistic.location)
                if statistic.operation != PrimitiveOperation.PBS or found is None:
                    continue
                for key_type, index in statistic.keys:
                    if key_type == KeyType.BOOTSTRAP:
                        tag = found.group(1)
                        per_tag[tag] = max(per_tag.get(tag, 0), keys[index].polynomial_size())
    except Exception:  # an internal API that may move: the largest N then, the smallest shift
        per_tag = {}
    largest = max(sizes, default=None)  # no bootstrap key: no lookup reads one
    return lambda tag: per_tag.get(tag, largest)


# Counter-based draws (splitmix64's finalizer): a draw is a function of its row, lookup and
# element, so it does not depend on what else is in the batch. uint64 arithmetic wraps.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@np.errstate(over="ignore")
def _mix(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _string_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@np.errstate(over="ignore")
def _row_keys(q_inputs: Sequence[np.ndarray], random_state: int) -> np.ndarray:
    """One 64-bit key per row, from the row's integers and ``random_state``."""
    n = q_inputs[0].shape[0]
    keys = np.full(n, _mix(np.uint64(_string_key(f"rows:{int(random_state)}"))), dtype=np.uint64)
    for x in q_inputs:
        columns = np.ascontiguousarray(np.asarray(x, dtype=np.int64).reshape(n, -1)).view(np.uint64)
        for j in range(columns.shape[1]):
            keys = _mix(keys ^ (columns[:, j] + np.uint64(j + 1) * _GOLDEN))
    return keys


def _gaussian(keys: np.ndarray) -> np.ndarray:
    """Standard normal draws from 64-bit keys (Box-Muller on two uniforms per key)."""
    scale = 2.0 ** -53
    u1 = ((_mix(keys) >> np.uint64(11)).astype(np.float64) + 1.0) * scale  # in (0, 1]
    u2 = (_mix(keys ^ _GOLDEN) >> np.uint64(11)).astype(np.float64) * scale
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
