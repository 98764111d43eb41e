"""Accumulator rounding: a pass over the program's table lookups.

Rounding an accumulator to its ``n`` most significant bits before a lookup makes the
bootstrap work on ``n`` bits instead of the accumulator's full width.
"""
from __future__ import annotations

import warnings
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from .noise import noise_variances
from .program import IntegerProgram
from .quantizers import MAX_ACCUMULATOR_BIT_WIDTH
from .steps import TableLookup, bit_width

BitsLike = Union[int, str]
RoundingLike = Union[None, int, Sequence[BitsLike], Mapping[str, Union[str, int, Sequence[BitsLike]]]]
# "auto" never goes below this many bits (the bootstrap costs hardly fall further), nor
# above that many (a wider bootstrap needs minutes of key generation and gigabytes of keys).
AUTO_MIN_BITS = 3
AUTO_MAX_BITS = 8
# "auto" lowers a lookup's precision as long as at most this fraction of the calibration
# samples see the model's decision change (argmax of the outputs; for one output column,
# a change beyond 1% of its range).
AUTO_TOLERANCE = 0.002
# Fewer calibration samples than this say too little about the decisions: "auto" then
# keeps the accumulators whole.
AUTO_MIN_SAMPLES = 100
# The QAT import's default: decisions kept (as above), and exact rounding, so the
# encrypted run equals the simulation bit for bit.
AUTO_EXACT = MappingProxyType({"n_bits": "auto", "method": "exact"})


def parse_rounding(rounding_threshold_bits: RoundingLike) -> Optional[tuple[tuple[BitsLike, ...], str]]:
    """``(n_bits per lookup, "exact" | "approximate")``, or None for no rounding.

    ``n_bits`` is an int, ``"auto"``, or a sequence of them: one per table lookup in the
    order the network runs them (in an MLP, one per hidden layer), the last one for all
    further lookups; entries beyond the network's lookups are unused, so one setting
    serves networks of any depth. A first layer on few features may deserve a bit more
    than the others: rounding its accumulators acts like coarser inputs.
    """
    if rounding_threshold_bits is None:
        return None
    method = "approximate"
    n_bits = rounding_threshold_bits
    if isinstance(rounding_threshold_bits, Mapping):
        unknown = set(rounding_threshold_bits) - {"n_bits", "method"}
        if unknown:
            raise ValueError(f"unknown rounding_threshold_bits keys {sorted(unknown)}; use 'n_bits' and 'method'")
        n_bits = rounding_threshold_bits.get("n_bits", "auto")
        method = str(getattr(rounding_threshold_bits.get("method", method), "name",
                             rounding_threshold_bits.get("method", method))).lower()
        if method not in ("exact", "approximate"):
            raise ValueError(f"rounding method {method!r} is not 'exact' or 'approximate'")
    per_lookup = tuple(n_bits) if isinstance(n_bits, (list, tuple)) else (n_bits,)
    if not per_lookup:
        raise ValueError("rounding_threshold_bits n_bits is an empty sequence: give one bit-width or more")
    return tuple(_check_bits(bits) for bits in per_lookup), method


def _check_bits(n_bits) -> BitsLike:
    if isinstance(n_bits, str) and n_bits == "auto":
        return "auto"
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)):
        raise TypeError(
            f"rounding_threshold_bits n_bits must be an int or 'auto' (or a sequence of them), got {n_bits!r}")
    if not 2 <= n_bits <= 16:
        raise ValueError(f"rounding_threshold_bits={n_bits} is out of range: use 2 to 16")
    return int(n_bits)


def apply_rounding(program: IntegerProgram, calibration: tuple, rounding: RoundingLike) -> None:
    """Set ``lsbs_to_remove`` (with its gain and shift) on every lookup wider than the threshold.

    With ``n_bits="auto"``, lookups are visited in order and each gets the fewest bits
    (from ``AUTO_MIN_BITS`` to ``AUTO_MAX_BITS``) under which, after ``_align``'s gain and
    shift, the model decides as it does unrounded on all but ``AUTO_TOLERANCE`` of the
    calibration samples (``AUTO_MAX_BITS`` if none does).
    """
    parsed = parse_rounding(rounding)
    for step in program.table_lookups:
        step.lsbs_to_remove, step.gain, step.shift = 0, None, None
    if parsed is None:
        return
    per_lookup, method = parsed
    # the last entry serves the further lookups; entries past the last lookup are unused
    bits_of = {id(step): per_lookup[min(i, len(per_lookup) - 1)] for i, step in enumerate(program.table_lookups)}
    auto = "auto" in bits_of.values()
    if auto and len(calibration[0]) < AUTO_MIN_SAMPLES:
        warnings.warn(
            f"rounding 'auto' needs at least {AUTO_MIN_SAMPLES} calibration samples to judge the "
            f"model's decisions, got {len(calibration[0])}: accumulators are kept whole",
            UserWarning, stacklevel=2,
        )
        return
    reference = _decisions(program, calibration) if auto else None
    # exact rounding spends extra bootstraps on the removed bits: there the gain's noise
    # mattered less than the bits 'auto' keeps without it (QATPrunedSimpleNet: capped gains
    # cost 15% more), so the cap is for approximate rounding only
    variances = (noise_variances(program) if method == "approximate" else None) or {}
    values = dict(zip(program.input_names, calibration))
    for step in program.steps:
        args = [values[name] for name in step.inputs]
        if isinstance(step, TableLookup):
            step.exactness = method
            _choose_precision(step, np.asarray(args[0], dtype=np.int64), bits_of[id(step)], program, calibration,
                              reference, variances.get(step.inputs[0]))
        values[step.output] = step.numpy(*args)


def _choose_precision(step: TableLookup, x: np.ndarray, n_bits, program: IntegerProgram, calibration: tuple,
                      reference: Optional[list], variance: Optional[np.ndarray] = None) -> None:
    """``n_bits`` for the lookup reading ``x``; for "auto", the fewest that keep ``reference``."""
    width = bit_width(int(x.min()), int(x.max()))
    if n_bits == "auto":
        targets = [*range(min(AUTO_MIN_BITS, width), min(width, AUTO_MAX_BITS)), min(width, AUTO_MAX_BITS)]
    else:
        targets = [n_bits]
    for target in targets:
        step.lsbs_to_remove, step.gain, step.shift = max(width - target, 0), None, None
        if step.lsbs_to_remove:
            _align_finest(step, x, width, variance)
        if reference is None or _changed(program, calibration, reference) <= AUTO_TOLERANCE:
            return


def _align_finest(step: TableLookup, x: np.ndarray, width: int, variance: Optional[np.ndarray] = None) -> None:
    """``_align`` at the accumulator's width and up to ``FRACTIONAL_GAIN_BITS`` wider; keep the best.

    An integer gain fills an element's share of the range only to between a half and all
    of it. One more bit in the accumulator, removed again by the rounding, makes the
    same integers act as halves (``gain / 2``), two as quarters, so more of the bins fall
    where the element's values are. The one kept is the one under which the fewest
    calibration values read another table entry than unrounded. Approximate rounding
    only: exact rounding pays a bootstrap for every bit it removes.
    """
    removed = step.lsbs_to_remove
    extras = FRACTIONAL_GAIN_BITS if step.exactness == "approximate" else 0
    extras = max(min(extras, MAX_ACCUMULATOR_BIT_WIDTH - width), 0)
    exact = step.function(x)
    best = None
    for extra in range(extras + 1):
        step.lsbs_to_remove, step.gain, step.shift = removed + extra, None, None
        # the bins are 2**extra times wider: so may the noise be, for the same share of a bin
        _align(step, x, width + extra, variance, headroom=NOISE_HEADROOM * 4**extra)
        errors = int(np.sum(step.numpy(x) != exact))
        if best is None or errors < best[0]:
            best = (errors, step.lsbs_to_remove, step.gain, step.shift)
    _, step.lsbs_to_remove, step.gain, step.shift = best


def _decisions(program: IntegerProgram, calibration: tuple) -> list[np.ndarray]:
    """Per sample, what the model decides: the argmax of its (dequantized) outputs, or the value to 1% of its range."""
    results = program.run(*calibration)
    decisions = []
    for out, reader in zip(results if isinstance(results, tuple) else (results,), program.outputs):
        out = reader.dequantize(out)
        out = out.reshape(len(out), -1)
        if out.shape[1] > 1:
            decisions.append(out.argmax(axis=1))
        else:
            span = max(float(np.ptp(out)), 1e-12)
            decisions.append(np.floor(out[:, 0] / (span / 100)))
    return decisions


def _changed(program: IntegerProgram, calibration: tuple, reference: list[np.ndarray]) -> float:
    return max(float(np.mean(a != b)) for a, b in zip(_decisions(program, calibration), reference))


# How far a gain may take an element's noise variance past the noisiest element's without
# gain. A bootstrap's input noise is not only the weighted sum's (key switching and modulus
# switching add their own), so some headroom is free: on the checkerboard networks, 4 kept
# the keys of the uncapped circuits' cheaper half (complexity at most 1.10e10 over 8 seeds,
# against up to 1.42e10 uncapped) at the same accuracy (94.74% against 94.77% on fresh points).
NOISE_HEADROOM = 4.0
# How many bits wider than needed approximate rounding may take an accumulator, so that
# integer gains act as fractions (see ``_align_finest``). On the checkerboard estimator
# (8 seeds, 8-bit activations) the first layer's lookups went from 78% to 94% of their
# bins in use, and the simulated accuracy on fresh points from 95.16% to 95.20% (95.25%
# to 95.29% in the clear), for 6% more complexity.
FRACTIONAL_GAIN_BITS = 2
# Shifts tried per element: all of them up to this many, evenly spread beyond.
MAX_SHIFT_CANDIDATES = 64


def _align(step: TableLookup, x: np.ndarray, width: int, variance: Optional[np.ndarray] = None,
           headroom: Optional[float] = None) -> None:
    """Spread and shift each element of a rounded accumulator so rounding loses the least.

    Rounding keeps a fixed number of the accumulator tensor's most significant bits, so
    an element whose values span a small part of the tensor's range (small weights) is
    left with few distinct levels. Multiplying it by an integer ``gain`` (free in FHE)
    spreads it over the range the bit-width already allows. Rounding also maps a whole
    bin of values to one table entry, so a step of the table (a ReLU's kink, a
    quantizer's threshold) inside a bin moves to the bin's edge; adding a per-element
    ``shift`` before rounding (free too) moves the bins instead. The shift kept is the
    one under which the rounded lookup differs from the exact one on the fewest samples
    of ``x``. The table reads ``function((rounded - shift) / gain)``, so nothing else
    changes. Neither ever widens the rounded value beyond the bit-width: a value within
    half a bin of the top would round up past it (concrete-python then adds a bit, and
    per-element tables fall back to exact rounding), so shifts that get there are refused.

    The gain multiplies the element's encryption noise too. Given the noise ``variance``
    of each element (``noise.noise_variances``; ``apply_rounding`` gives it for approximate
    rounding), an element's gain stops where its noise variance would pass
    ``headroom`` times the noisiest element's, so the keys concrete-python picks
    stay about those it needs without gains. (Uncapped, one small-weight neuron of the
    demo's network took a gain of 22 and made every bootstrap of the circuit 30% dearer.)
    """
    headroom = NOISE_HEADROOM if headroom is None else headroom
    unit = 1 << step.lsbs_to_remove
    lowest, highest = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if x.min() < 0 else (0, (1 << width) - 1)
    exact = step.function(x)
    per_low, per_high = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    # the largest integer gain that keeps the element in range, with room for a shift
    room_high = np.where(per_high > 0, (highest - unit // 2) / np.maximum(per_high, 1), np.inf)
    room_low = np.where(per_low < 0, (lowest + unit // 2) / np.minimum(per_low, -1), np.inf)
    gain = np.clip(np.floor(np.minimum(room_high, room_low)), 1, unit)
    if variance is not None and variance.shape[1:] == per_low.shape[1:] and variance.max() > 0:
        quiet = np.sqrt(headroom * variance.max() / np.maximum(variance, 1e-12))
        gain = np.minimum(gain, np.maximum(np.floor(quiet), 1))
    gain = gain.astype(np.int64)
    step.gain = gain if np.any(gain > 1) else None
    spread_low, spread_high = per_low * gain, per_high * gain

    candidates = np.arange(-(unit // 2), unit // 2 + 1)
    if candidates.size > MAX_SHIFT_CANDIDATES:
        candidates = np.unique(np.linspace(-(unit // 2), unit // 2, MAX_SHIFT_CANDIDATES).round().astype(np.int64))
    candidates = sorted(candidates, key=abs)  # ties keep the smallest shift
    best_errors = np.full(per_low.shape, np.iinfo(np.int64).max)
    best = np.zeros(per_low.shape, dtype=np.int64)
    # round-half-up sends values above ``highest - unit / 2`` to ``highest + 1``: one bit more
    top = highest - unit // 2

    def fits(shift):
        return (spread_low + shift >= lowest) & (spread_high + shift <= top)

    for shift in candidates:
        step.shift = shift  # the same shift for every element: each keeps its best
        errors = np.sum(step.numpy(x) != exact, axis=0, keepdims=True)
        # a whole bin lower puts the same values on the same table entries
        fits_here = fits(shift)
        better = (fits_here | fits(shift - unit)) & (errors < best_errors)
        best_errors = np.where(better, errors, best_errors)
        best = np.where(better, np.where(fits_here, shift, shift - unit), best)
    step.shift = best if np.any(best) else None


def exact_fallback(program: IntegerProgram) -> bool:
    """Switch per-element lookups from approximate to exact rounding; True if any changed.

    concrete-python 2.11 fails to shrink per-element tables after approximate rounding
    (mlir/converter.py, ``tlu``, multi-table branch): those lookups must round exactly.
    """
    changed = False
    for step in program.table_lookups:
        if step.lsbs_to_remove and step.exactness == "approximate" and _per_element(step):
            step.exactness = "exact"
            changed = True
    return changed


def _per_element(step) -> bool:
    """Whether the lookup's table differs between elements (biases, per-channel scales)."""
    low, high = step.input_bounds
    probes = np.unique(np.linspace(low, high, 9).round().astype(np.int64))
    for value in probes:
        out = step.lookup(np.full(step.sample_shape, value, dtype=np.int64))
        if np.any(out != out.flat[0]):
            return True
    return False
