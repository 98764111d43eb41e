"""Symbolic linear bounds: each value between two affine functions of the program's inputs.

Interval rules (``bounds.py``) count every element of a value at its extreme at once,
although neighbouring elements of a convolution's output share input pixels and never
reach their extremes together. Here every element of a value gets a lower and an upper
affine function of the program's input elements (a coefficient per input element and a
constant), valid for every input in the box. Linear steps map them exactly; a lookup is
bounded between two lines of its accumulator (``slope_low * x + c_low <= f(x) <=
slope_high * x + c_high``, the constants taken over every entry it can read, its neighbours
for a bootstrap's mistake included), then the accumulator's own affine bounds go in by each
slope's sign. Concretized over the box (per sign of a coefficient, the input's low or high
end), they give an interval that ``BoxBounds`` intersects with the interval rules' one:
both hold every value, so their intersection does.

Coefficients are float64 (a lookup's slope is a fraction): concretized bounds are widened
by a relative margin far above float64's rounding error before they are made integers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..onnx.ops import OPS
from .steps import AddSub, Conv, Index, MatMul, ReduceSum, Reshape, Shift, Step, TableLookup, step_rules

# beyond this many coefficients for one value (elements x input elements), the value keeps its interval
MAX_COEFFICIENTS = 1 << 24
# beyond this many (rounded value, element) pairs, a lookup is bounded by intervals only: reading
# longer tables whole costs seconds and gigabytes at compile time (unrounded 8-bit accumulators)
MAX_LOOKUP_ENTRIES = 1 << 21
# relative widening of a concretized bound: float64 sums of this size err below 1e-12
_MARGIN = 1e-9


@dataclass
class Affine:
    """Per element of a value, ``a_low . x + c_low <= value <= a_high . x + c_high`` on the box.

    ``c_low`` and ``c_high`` have a leading axis of 1; ``a_low`` and ``a_high`` one of the
    program's input elements (all inputs flattened one after the other).
    """

    a_low: np.ndarray
    c_low: np.ndarray
    a_high: np.ndarray
    c_high: np.ndarray


# one rule per step type: how its output's affine bounds follow from its inputs'
AFFINE_RULES, affine_rule = step_rules()


def input_affines(program) -> dict[str, Affine]:
    """Each program input as the identity on its own elements (exact bounds)."""
    sizes = [int(np.prod(shape)) for shape in program.sample_shapes]
    total, start, affines = sum(sizes), 0, {}
    if total * max(sizes, default=0) > MAX_COEFFICIENTS:
        return affines
    for name, shape, size in zip(program.input_names, program.sample_shapes, sizes):
        a = np.zeros((total, size))
        a[start:start + size] = np.eye(size)
        a = a.reshape((total, *shape))
        zero = np.zeros((1, *shape))
        affines[name] = Affine(a, zero, a, zero)
        start += size
    return affines


def box_ends(program, intervals: dict) -> tuple[np.ndarray, np.ndarray]:
    """The box's low and high ends, one per input element, as columns."""
    lows = np.concatenate([intervals[name][0].ravel() for name in program.input_names]).astype(np.float64)
    highs = np.concatenate([intervals[name][1].ravel() for name in program.input_names]).astype(np.float64)
    return lows[:, None], highs[:, None]


def concretize(affine: Affine, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per element, the integer interval the affine bounds give over ``box`` (widened for float error)."""
    low_end, high_end = box
    n = len(low_end)
    shape = affine.c_low.shape
    a_low, a_high = affine.a_low.reshape(n, -1), affine.a_high.reshape(n, -1)
    c_low, c_high = affine.c_low.reshape(-1), affine.c_high.reshape(-1)
    low = (np.maximum(a_low, 0) * low_end + np.minimum(a_low, 0) * high_end).sum(axis=0) + c_low
    high = (np.maximum(a_high, 0) * high_end + np.minimum(a_high, 0) * low_end).sum(axis=0) + c_high
    scale_end = np.maximum(np.abs(low_end), np.abs(high_end))
    low_size = (np.abs(a_low) * scale_end).sum(axis=0) + np.abs(c_low)
    high_size = (np.abs(a_high) * scale_end).sum(axis=0) + np.abs(c_high)
    low = np.floor(low - _MARGIN * low_size - 1e-6)
    high = np.ceil(high + _MARGIN * high_size + 1e-6)
    # beyond int64 the interval rules' bounds are the tighter ones anyway
    limit = float(1 << 62)
    return (np.clip(low, -limit, limit).astype(np.int64).reshape(shape),
            np.clip(high, -limit, limit).astype(np.int64).reshape(shape))


def propagate(step: Step, affines: dict[str, Optional[Affine]], intervals: dict) -> Optional[Affine]:
    """``step``'s output bounds from its inputs' (None: unknown, or too large to keep)."""
    rule = AFFINE_RULES.get(type(step))
    inputs = [affines.get(name) for name in step.inputs]
    if rule is None or any(a is None for a in inputs):
        return None
    n = len(inputs[0].a_low)
    out_size = int(np.prod(intervals[step.output][0].shape)) if step.output in intervals else None
    if out_size is not None and n * out_size > MAX_COEFFICIENTS:
        return None
    return rule(step, *inputs, intervals=[intervals[name] for name in step.inputs])


@affine_rule(Shift)
def _shift(step: Shift, x: Affine, intervals) -> Affine:
    return replace(x, c_low=x.c_low + step.constant, c_high=x.c_high + step.constant)


@affine_rule(AddSub)
def _add_sub(step: AddSub, a: Affine, b: Affine, intervals) -> Affine:
    if step.subtract:
        return Affine(a.a_low - b.a_high, a.c_low - b.c_high, a.a_high - b.a_low, a.c_high - b.c_low)
    return Affine(a.a_low + b.a_low, a.c_low + b.c_low, a.a_high + b.a_high, a.c_high + b.c_high)


def _apply(step: Step, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The step with ``weight`` on a float batch (its own ``numpy`` rounds to integers)."""
    weight = np.asarray(weight, dtype=np.float64)
    if isinstance(step, MatMul):
        return np.matmul(weight, x) if step.left else np.matmul(x, weight)
    return OPS["Conv"](x, weight, None, pads=list(step.pads), strides=list(step.strides),
                       dilations=list(step.dilations), group=step.group)


@affine_rule(MatMul, Conv)
def _weighted_sum(step: Step, x: Affine, intervals) -> Affine:
    """Positive weights take the upper bound of their input, negative ones the lower (for the upper bound)."""
    weight = np.asarray(step.weight, dtype=np.float64)
    positive, negative = np.maximum(weight, 0), np.minimum(weight, 0)

    def both(a_up, a_down):
        return _apply(step, positive, a_up) + _apply(step, negative, a_down)

    return Affine(both(x.a_low, x.a_high), both(x.c_low, x.c_high),
                  both(x.a_high, x.a_low), both(x.c_high, x.c_low))


@affine_rule(ReduceSum, Reshape, Index)
def _moved(step: Step, *xs: Affine, intervals) -> Affine:
    """Elements moved or summed: linear without a constant, so the step maps coefficients as a batch."""
    def run(arrays):
        return np.asarray(step.numpy(*arrays), dtype=np.float64)

    return Affine(run([x.a_low for x in xs]), run([x.c_low for x in xs]),
                  run([x.a_high for x in xs]), run([x.c_high for x in xs]))


def _accumulator_bins(step: TableLookup, r: np.ndarray, low: np.ndarray, high: np.ndarray):
    """Per rounded value ``r``, the accumulators that round to it: an interval within ``[low, high]``
    (sound if a little wide: both ends of the rounding's half-bin count)."""
    half = (1 << step.lsbs_to_remove) // 2
    spread_low, spread_high = r - half, r + half
    if step.shift is not None:
        spread_low, spread_high = spread_low - step.shift, spread_high - step.shift
    if step.gain is not None:
        spread_low, spread_high = spread_low / step.gain, spread_high / step.gain  # gains are positive
    return np.maximum(spread_low, low), np.minimum(spread_high, high)


def _bins(step: TableLookup, low: np.ndarray, high: np.ndarray) -> Optional[tuple]:
    """Per rounded value an element can read (leading axis; its last repeated past its count): the
    lowest and highest entry read there (the neighbours' for a bootstrap's mistake too), and the
    accumulators that round to it. None beyond ``MAX_LOOKUP_ENTRIES`` (value, element) pairs."""
    from .bounds import rounded_bounds

    r_low, r_high = rounded_bounds(step, (low, high))
    unit = 1 << step.lsbs_to_remove
    counts = (r_high - r_low) // unit + 1
    longest = int(counts.max())
    if longest * low.size > MAX_LOOKUP_ENTRIES:
        return None
    shape = (-1,) + (1,) * (low.ndim - 1)
    # the table read once, a bin beyond either end included; each row then takes its neighbours
    j = np.arange(longest + 2).reshape(shape)
    table = np.asarray(step.lookup(r_low + unit * (np.minimum(j, counts + 1) - 1)), dtype=np.float64)
    table = np.broadcast_to(table, (longest + 2,) + r_low.shape[1:])
    around = (table[:-2], table[1:-1], table[2:])
    # past an element's own count, its last row repeats: it changes no extreme
    k = np.minimum(np.arange(longest).reshape(shape), counts - 1)
    r = r_low + unit * k
    f_min, f_max = (np.take_along_axis(np.broadcast_to(reduce(around), (longest,) + r.shape[1:]), k, axis=0)
                    for reduce in (np.minimum.reduce, np.maximum.reduce))
    return (f_min, f_max, *_accumulator_bins(step, r, low, high))


def _constants(bins: tuple, slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest ``f - slope*x`` over every (entry, accumulator) pair of ``bins``: at
    one end of each bin's accumulators, by the slope's sign."""
    f_min, f_max, x_first, x_last = bins
    at_first, at_last = slope * x_first, slope * x_last
    return ((f_min - np.maximum(at_first, at_last)).min(axis=0, keepdims=True),
            (f_max - np.minimum(at_first, at_last)).max(axis=0, keepdims=True))


def lookup_lines(step: TableLookup, low: np.ndarray, high: np.ndarray) -> Optional[tuple]:
    """Per element, ``slope_low, c_low, slope_high, c_high`` with ``slope_low*x + c_low <= f(x) <=
    slope_high*x + c_high`` for every accumulator ``x`` in ``[low, high]`` (arrays with a leading axis
    of 1), where ``f`` is any entry the lookup can read at ``x``: the rounded one or a neighbour (a
    bootstrap's mistake). None when the table is too long to read whole.

    Each line's slope is the one of three (flat, the chord between the ends, the ramp from the
    lowest entry to the highest) whose line lies closest to the table on average over the
    accumulator's range (the line's value at its middle).
    """
    low, high = (np.asarray(v, dtype=np.int64) for v in (low, high))
    bins = _bins(step, low, high)
    if bins is None:
        return None
    f_min, f_max, x_first, x_last = bins
    span = np.maximum(high - low, 1).astype(np.float64)
    chord = np.where(high > low, (f_min[-1:] - f_min[:1]) / span, 0.0)
    x_mid = (x_first + x_last) / 2
    at_lowest = np.take_along_axis(x_mid, f_min.argmin(axis=0)[None], axis=0)
    at_highest = np.take_along_axis(x_mid, f_max.argmax(axis=0)[None], axis=0)
    distance = at_highest - at_lowest
    ramp = np.where(distance != 0, (f_max.max(axis=0, keepdims=True) - f_min.min(axis=0, keepdims=True))
                    / np.where(distance != 0, distance, 1), 0.0)
    middle = (low + high) / 2
    best_low = best_high = None
    for slope in (np.zeros(low.shape), chord, ramp):
        c_low, c_high = _constants(bins, slope)
        low_mid, high_mid = slope * middle + c_low, slope * middle + c_high
        if best_low is None:
            best_low, best_high = (slope, c_low, low_mid), (slope, c_high, high_mid)
            continue
        better_low, better_high = low_mid > best_low[2], high_mid < best_high[2]
        best_low = tuple(np.where(better_low, new, old) for new, old in zip((slope, c_low, low_mid), best_low))
        best_high = tuple(np.where(better_high, new, old) for new, old in zip((slope, c_high, high_mid), best_high))
    return best_low[0], best_low[1], best_high[0], best_high[1]


@affine_rule(TableLookup)
def _lookup(step: TableLookup, x: Affine, intervals) -> Affine:
    """Between two lines of the accumulator, whose affine bounds go in by each slope's sign."""
    (low, high), = intervals
    lines = lookup_lines(step, low, high)
    if lines is None:
        return None
    slope_low, c_low, slope_high, c_high = lines
    # a rising line takes the accumulator's bound on the same side, a falling one the other
    low_rising, high_rising = slope_low >= 0, slope_high >= 0
    return Affine(slope_low * np.where(low_rising, x.a_low, x.a_high),
                  slope_low * np.where(low_rising, x.c_low, x.c_high) + c_low,
                  slope_high * np.where(high_rising, x.a_high, x.a_low),
                  slope_high * np.where(high_rising, x.c_high, x.c_low) + c_high)


def intersect(a: tuple, b: tuple) -> tuple:
    """Two sound intervals' intersection: sound too."""
    return np.maximum(a[0], b[0]), np.minimum(a[1], b[1])


def tighten(step: Step, intervals: dict, affines: dict[str, Affine], corners: tuple) -> tuple:
    """``step``'s output interval by the interval rules, intersected with the one its affine bounds
    give over the box ``corners`` where they are known; both are stored by the output's name."""
    from .bounds import propagate as interval_propagate

    interval = interval_propagate(step, intervals)
    intervals[step.output] = interval  # ``propagate`` reads the output's size from it
    affine = propagate(step, affines, intervals)
    if affine is not None:
        affines[step.output] = affine
        interval = intersect(interval, concretize(affine, corners))
        intervals[step.output] = interval
    return interval


def affine_intervals(program, ranges: Sequence[tuple]) -> dict:
    """Every value's interval from its affine bounds alone, intersected with the interval rules
    step by step (what ``BoxBounds`` does on a box too large to run whole)."""
    from .bounds import box

    intervals = box(program, ranges)
    affines = input_affines(program)
    corners = box_ends(program, intervals)
    for step in program.steps:
        tighten(step, intervals, affines, corners)
    return intervals
