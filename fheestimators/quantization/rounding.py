"""Accumulator rounding: a pass over the program's table lookups.

Rounding an accumulator to its ``n`` most significant bits before a lookup makes the
bootstrap work on ``n`` bits instead of the accumulator's full width.
"""
from __future__ import annotations

import warnings
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from . import bounds
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


def apply_rounding(program: IntegerProgram, calibration: tuple, rounding: RoundingLike,
                   input_ranges: Optional[Sequence[tuple[int, int]]] = None) -> None:
    """Set ``lsbs_to_remove`` (with its gain and shift) on every lookup wider than the threshold.

    Each lookup is sized for the values its accumulator can take: with ``input_ranges``
    (per program input, the clip range of every element), for every input in that box
    (``bounds.py``), so that no input the module accepts takes a lookup beyond its
    range; without, for the values it takes on ``calibration``. Either way, every
    rounded lookup's input is shifted to non-negative integers (free in FHE), so that
    its integer type is unsigned whatever the inputset concrete-python traces shows; a
    lookup read whole keeps its accumulator as it is (``bounds.sign_values`` shifts it
    when compiling if the traced inputset would give it the wrong type).

    With ``n_bits="auto"``, lookups are visited in order and each gets the fewest bits
    (from ``AUTO_MIN_BITS`` to ``AUTO_MAX_BITS``) under which, after ``_align``'s gain and
    shift, the model decides as it does unrounded on all but ``AUTO_TOLERANCE`` of the
    calibration samples (``AUTO_MAX_BITS`` if none does).
    """
    parsed = parse_rounding(rounding)
    for step in program.table_lookups:
        step.lsbs_to_remove, step.gain, step.shift, step.offset = 0, None, None, None
    per_lookup, method = parsed if parsed is not None else ((None,), "approximate")
    # the last entry serves the further lookups; entries past the last lookup are unused
    bits_of = {id(step): per_lookup[min(i, len(per_lookup) - 1)] for i, step in enumerate(program.table_lookups)}
    auto = "auto" in bits_of.values()
    if auto and len(calibration[0]) < AUTO_MIN_SAMPLES:
        warnings.warn(
            f"rounding 'auto' needs at least {AUTO_MIN_SAMPLES} calibration samples to judge the "
            f"model's decisions, got {len(calibration[0])}: accumulators are kept whole",
            UserWarning, stacklevel=2,
        )
        bits_of, auto = {key: None for key in bits_of}, False
    reference = _decisions(program, calibration) if auto else None
    # exact rounding spends extra bootstraps on the removed bits: there the gain's noise
    # mattered less than the bits 'auto' keeps without it (QATPrunedSimpleNet: capped gains
    # cost 15% more), so the cap is for approximate rounding only
    variances = (noise_variances(program) if parsed is not None and method == "approximate" else None) or {}
    values = dict(zip(program.input_names, calibration))
    # unrounded lookups read their whole accumulator, whatever its range: no bounds to size them by
    box = bounds.BoxBounds(program, input_ranges) if input_ranges is not None and parsed is not None else None
    intervals = box.intervals if box is not None else None
    for step in program.steps:
        args = [values[name] for name in step.inputs]
        if isinstance(step, TableLookup):
            step.exactness = method
            x = np.asarray(args[0], dtype=np.int64)
            interval = intervals[step.inputs[0]] if intervals is not None else (
                x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True))
            _choose_precision(step, x, bits_of[id(step)], program, calibration, reference,
                              variances.get(step.inputs[0]), interval)
        values[step.output] = step.numpy(*args)
        if box is not None:
            box.add(step)


def _rounded_width(span: int, n_bits: int) -> int:
    """The fewest bits removed so that values over ``span`` (from 0) are read with ``n_bits``.

    Rounding half up sends the top half-bin to the next bin: the values must end half a
    bin below the top of the accumulator's ``n_bits + removed`` bits.
    """
    if span < 1 << n_bits:
        return 0
    removed = 1
    while span > (1 << (n_bits + removed)) - 1 - (1 << (removed - 1)):
        removed += 1
    return removed


def _removed_bits(interval: tuple, n_bits: int) -> int:
    """How many bits rounding removes for the table to read ``n_bits`` of an accumulator over ``interval``.

    Each element is spread from 0 (``_align``), so its values must fit the bits kept once
    shifted (``_rounded_width``); and concrete-python carries the spread value on at least
    as many bits as the accumulator the linear step writes, signed or not.
    """
    width = bit_width(int(np.min(interval[0])), int(np.max(interval[1])))
    if width <= n_bits:
        return 0
    return max(_rounded_width(int(np.max(interval[1] - interval[0])), n_bits), width - n_bits)


def _usable(width: int, removed: int, widest: int) -> tuple[int, int]:
    """The lowest and highest value a rounded lookup's spread input may take on ``width`` bits.

    Rounding half up sends a value from the top half-bin to the next bin, a bit wider:
    the values end half a bin below the top. Within that, the table's first and last
    entries stay free when the ``widest`` element's span leaves room: a bootstrap's
    mistake reads the entry next to the right one, and from an end entry it would wrap
    around to the other end of the table (a saturated activation's lowest value read as
    its highest). Without that room, what there is is shared between both ends.
    """
    unit = 1 << removed
    top = (1 << width) - 1 - unit // 2
    room = max(top - widest, 0)
    low_margin = unit // 2 if room >= unit + unit // 2 else room // 3
    high_margin = unit if room >= unit + unit // 2 else room - room // 3
    return low_margin, top - high_margin


def _choose_precision(step: TableLookup, x: np.ndarray, n_bits, program: IntegerProgram, calibration: tuple,
                      reference: Optional[list], variance: Optional[np.ndarray] = None,
                      interval: Optional[tuple] = None) -> None:
    """``n_bits`` for the lookup reading ``x``; for "auto", the fewest that keep ``reference``.

    ``interval`` (per element, the lowest and highest accumulator) is the range the
    lookup is sized for; by default the range of ``x``.
    """
    if interval is None:
        interval = (x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True))
    interval = tuple(np.asarray(v, dtype=np.int64) for v in interval)
    width = bit_width(int(np.min(interval[0])), int(np.max(interval[1])))
    if n_bits is None:
        targets = [width]
    elif n_bits == "auto":
        targets = [*range(min(AUTO_MIN_BITS, width), min(width, AUTO_MAX_BITS)), min(width, AUTO_MAX_BITS)]
    else:
        targets = [n_bits]
    for target in targets:
        step.gain = step.shift = step.offset = None
        step.lsbs_to_remove = _removed_bits(interval, target)
        if step.lsbs_to_remove:
            _align_finest(step, x, target + step.lsbs_to_remove, variance, interval)
        if reference is None or _changed(program, calibration, reference) <= AUTO_TOLERANCE:
            return


def _align_finest(step: TableLookup, x: np.ndarray, width: int, variance: Optional[np.ndarray] = None,
                  interval: Optional[tuple] = None) -> None:
    """``_align`` at the accumulator's width and up to ``FRACTIONAL_GAIN_BITS`` wider; keep the best.

    An integer gain fills an element's share of the range only to between a half and all
    of it. One more bit in the accumulator, removed again by the rounding, makes the
    same integers act as halves (``gain / 2``), two as quarters, so more of the bins fall
    where the element's values are. The one kept is the one under which the fewest
    calibration values read another table entry than unrounded. Approximate rounding
    only: exact rounding pays a bootstrap for every bit it removes.
    """
    if interval is None:
        interval = (x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True))
    removed = step.lsbs_to_remove
    extras = FRACTIONAL_GAIN_BITS if step.exactness == "approximate" else 0
    extras = max(min(extras, MAX_ACCUMULATOR_BIT_WIDTH - width), 0)
    exact = step.function(x)
    best = None
    for extra in range(extras + 1):
        step.lsbs_to_remove, step.gain, step.shift, step.offset = removed + extra, None, None, None
        # the bins are 2**extra times wider: so may the noise be, for the same share of a bin
        _align(step, x, width + extra, variance, headroom=NOISE_HEADROOM * 4**extra, interval=interval)
        errors = int(np.sum(step.numpy(x) != exact))
        if best is None or errors < best[0]:
            best = (errors, step.lsbs_to_remove, step.gain, step.shift, step.offset)
    _, step.lsbs_to_remove, step.gain, step.shift, step.offset = best


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
           headroom: Optional[float] = None, interval: Optional[tuple] = None) -> None:
    """Spread and shift each element of a rounded accumulator so rounding loses the least.

    Rounding keeps a fixed number of the accumulator tensor's most significant bits, so
    an element whose values span a small part of the tensor's range (small weights) is
    left with few distinct levels. Multiplying it by an integer ``gain`` (free in FHE)
    spreads it over the range the bit-width already allows. Each element is also shifted
    (free too) so that its range starts at the bottom of that range (``_usable``): the
    integers are unsigned, whatever signs the rows concrete-python traces show. Rounding
    maps a whole bin of values to one table entry, so a step of the table (a ReLU's kink,
    a quantizer's threshold) inside a bin moves to the bin's edge; the shift's remainder
    within a bin (its phase) moves the bins instead. The phase kept is the one under
    which the rounded lookup differs from the exact one on the fewest samples of ``x``.
    The table reads ``function((rounded - shift) / gain)``, so nothing else changes.

    ``interval`` (per element, the lowest and highest accumulator the lookup must
    read; by default the range of ``x``) always fits ``width`` bits, rounded: rounding
    half up never takes a value a bit wider (concrete-python would add a bit, and
    per-element tables fall back to exact rounding), and where there is room, the
    table's end entries stay free, so that a bootstrap reading the next entry does not
    wrap around (``_usable``). Phases that would pass it are refused.

    The gain multiplies the element's encryption noise too. Given the noise ``variance``
    of each element (``noise.noise_variances``; ``apply_rounding`` gives it for approximate
    rounding), an element's gain stops where its noise variance would pass
    ``headroom`` times the noisiest element's, so the keys concrete-python picks
    stay about those it needs without gains. (Uncapped, one small-weight neuron of the
    demo's network took a gain of 22 and made every bootstrap of the circuit 30% dearer.)
    """
    headroom = NOISE_HEADROOM if headroom is None else headroom
    if interval is None:
        interval = (x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True))
    unit = 1 << step.lsbs_to_remove
    exact = step.function(x)
    low, high = (np.asarray(v, dtype=np.int64) for v in interval)
    span = high - low
    bottom, top = _usable(width, step.lsbs_to_remove, int(span.max()))
    # the largest integer gain that keeps the element in range
    gain = np.clip(np.floor((top - bottom) / np.maximum(span, 1)), 1, unit)
    if variance is not None and variance.shape[1:] == low.shape[1:] and variance.max() > 0:
        quiet = np.maximum(np.floor(np.sqrt(headroom * variance.max() / np.maximum(variance, 1e-12))), 1)
        # the gains the range would allow starting from 0 (half of it each side when the values
        # can be negative, as signed integers): none above the largest of them, since
        # concrete-python sizes the keys for the tensor's largest gain (checkerboard: 3 key
        # levels instead of 2 otherwise)
        half = top - bottom if low.min() >= 0 else (top - bottom) // 2
        centred = np.floor(np.minimum(np.where(high > 0, half / np.maximum(high, 1), np.inf),
                                      np.where(low < 0, half / np.maximum(-low, 1), np.inf)))
        centred = np.minimum(np.clip(centred, 1, unit), quiet)
        gain = np.minimum(np.minimum(gain, quiet), centred.max())
    gain = gain.astype(np.int64)
    step.gain = gain if np.any(gain > 1) else None
    base = bottom - gain * low  # the element's lowest value lands on the lowest usable value
    room = top - bottom - gain * span  # how far beyond it it may go

    phases = np.arange(unit)
    if phases.size > MAX_SHIFT_CANDIDATES:
        phases = np.unique(np.linspace(0, unit - 1, MAX_SHIFT_CANDIDATES).round().astype(np.int64))
    best_errors = np.full(low.shape, np.iinfo(np.int64).max)
    best = base.copy()
    for phase in phases:  # ascending: ties keep the smallest phase
        fits = phase <= room
        if not np.any(fits):
            break
        step.shift = np.where(fits, base + phase, base)  # the same phase for every element: each keeps its best
        errors = np.sum(step.numpy(x) != exact, axis=0, keepdims=True)
        better = fits & (errors < best_errors)
        best_errors = np.where(better, errors, best_errors)
        best = np.where(better, base + phase, best)
    step.shift = best if np.any(best) else None
    # in the circuit, the gain multiplies the accumulator once it starts at 0, so that no value
    # on the way to the spread one is wider than it (see ``TableLookup.fhe``)
    step.offset = -low if step.gain is not None and np.any(low) else None


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
