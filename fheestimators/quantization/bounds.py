"""The range of every value of the integer program over the clip box of its inputs.

A client can send any input within the module's clip box (``IntegerProgram.input_box``:
each element within its own range; ``clip_box``), in combinations the inputset never
showed. FHE computes every value modulo its bit-width: a value beyond the width
concrete-python gave it wraps around, and the lookup that reads it returns another entry
of its table. Sizing every value for the whole box, not for the rows seen at compile time,
makes that impossible for any input the client can send.

Each step has a rule that maps its inputs' intervals (per element: lowest and highest
value, arrays with a leading axis of 1) to its output's. Rules are exact for one linear
step on a box (each output element reaches its bounds at a corner: positive weights at the
high end, negative ones at the low end) and sound for the composition (an element's
interval holds every value it takes on the box, maybe more). A small box is run whole
instead (``BoxBounds``): exact throughout; a larger one also gets affine bounds of the
inputs (``affine_bounds.py``), which see that neighbouring elements share inputs.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Optional, Sequence

import numpy as np

from . import affine_bounds
from .steps import AddSub, Conv, Index, MatMul, ReduceSum, Reshape, Shift, Step, TableLookup, bit_width, step_rules

# What a program's values are sized for: "box", every input within the clip box (each
# feature of a table within its range in the inputset); or "inputset", the inputset's rows
# only, as before: a little finer on data of many features (digits: 0.1 point of simulated
# accuracy, 0.3 in the clear; design notes) but an input the module accepts can then take a
# value beyond its range, where FHE wraps around and the three modes disagree.
SIZING = "box"
Interval = tuple[np.ndarray, np.ndarray]
# one rule per step type: how its output's range follows from its inputs'
BOUND_RULES, bound_rule = step_rules()
# a lookup's table is evaluated on at most this many (value, element) pairs at once
_CHUNK = 1 << 22
# beyond this many entries (20 bits; FHE reads 16 at most), a table's range is estimated
_MAX_TABLE_ENTRIES = 1 << 20


@contextmanager
def sizing(kind: str) -> Iterator[None]:
    """Within this block, programs are built sized for ``kind``: "box" (the default) or "inputset"."""
    global SIZING
    if kind not in ("box", "inputset"):
        raise ValueError(f"sizing {kind!r} is not 'box' or 'inputset'")
    saved, SIZING = SIZING, kind
    try:
        yield
    finally:
        SIZING = saved


@bound_rule(Shift)
def _shift(step: Shift, x: Interval) -> Interval:
    return x[0] + step.constant, x[1] + step.constant


def _signed_parts(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weight = np.asarray(weight, dtype=np.int64)
    return np.maximum(weight, 0), np.minimum(weight, 0)


@bound_rule(MatMul, Conv)
def _weighted_sum(step: Step, x: Interval) -> Interval:
    """Positive weights take the high end of their input, negative ones the low end (for the high bound)."""
    positive, negative = _signed_parts(step.weight)
    low, high = x
    with_positive, with_negative = replace(step, weight=positive), replace(step, weight=negative)
    return (with_positive.numpy(low) + with_negative.numpy(high),
            with_positive.numpy(high) + with_negative.numpy(low))


@bound_rule(AddSub)
def _add_sub(step: AddSub, a: Interval, b: Interval) -> Interval:
    if step.subtract:
        return a[0] - b[1], a[1] - b[0]
    return a[0] + b[0], a[1] + b[1]


@bound_rule(ReduceSum, Reshape, Index)
def _moved(step: Step, *xs: Interval) -> Interval:
    """Elements moved or summed: lows move or add alike, highs too (a padded position reads 0 in both)."""
    return step.numpy(*(x[0] for x in xs)), step.numpy(*(x[1] for x in xs))


@bound_rule(TableLookup)
def _lookup(step: TableLookup, x: Interval) -> Interval:
    """The lowest and highest entry each element's table holds over the rounded values it can read.

    The entries one bin beyond either end count too: a bootstrap's mistake reads a
    neighbouring entry (``fhe="simulate"`` draws them), and the values after it must still
    fit their ranges.
    """
    low, high = rounded_bounds(step, x)
    unit = 1 << step.lsbs_to_remove
    return table_range(step, low - unit, high + unit)


def spread_bounds(step: TableLookup, x: Interval) -> Interval:
    """Per element, the range of the lookup's spread input (gain and shift applied) over ``x``."""
    low, high = (np.asarray(v, dtype=np.int64) for v in x)
    if step.gain is not None:
        low, high = low * step.gain, high * step.gain  # gains are positive
    if step.shift is not None:
        low, high = low + step.shift, high + step.shift
    return low, high


def rounded_bounds(step: TableLookup, x: Interval) -> Interval:
    """Per element, the range of the rounded value the table reads (rounding is monotone)."""
    low, high = spread_bounds(step, x)
    return np.asarray(step.round(low), dtype=np.int64), np.asarray(step.round(high), dtype=np.int64)


def table_range(step: TableLookup, low: np.ndarray, high: np.ndarray) -> Interval:
    """Per element, the lowest and highest ``step.lookup`` over the multiples of the rounding
    unit from ``low`` to ``high`` (both rounded values, per element)."""
    unit = 1 << step.lsbs_to_remove
    low, high = np.broadcast_arrays(np.asarray(low, dtype=np.int64), np.asarray(high, dtype=np.int64))
    shape = low.shape
    counts = (high - low) // unit + 1
    if counts.max() > _MAX_TABLE_ENTRIES:
        # a table no bootstrap can read (see MAX_TLU_BIT_WIDTH): an estimate, on evenly spread entries,
        # for the error the module raises before compiling
        unit = unit * -(-int(counts.max()) // _MAX_TABLE_ENTRIES)
        counts = (high - low) // unit + 2  # the last value: ``high`` itself
    out_low = np.full(shape, np.iinfo(np.int64).max)
    out_high = np.full(shape, np.iinfo(np.int64).min)
    longest = int(counts.max())
    chunk = max(1, _CHUNK // max(low.size, 1))
    for start in range(0, longest, chunk):
        k = np.arange(start, min(start + chunk, longest)).reshape((-1,) + (1,) * (len(shape) - 1))
        # past an element's own count, repeat its last value: it changes neither extreme
        values = np.minimum(low + unit * np.minimum(k, counts - 1), high)
        table = np.asarray(step.lookup(values), dtype=np.int64)
        table = np.broadcast_to(table, values.shape)
        out_low = np.minimum(out_low, table.min(axis=0, keepdims=True))
        out_high = np.maximum(out_high, table.max(axis=0, keepdims=True))
    return out_low, out_high


def propagate(step: Step, intervals: dict[str, Interval]) -> Interval:
    """The interval of ``step``'s output from those of its inputs (in ``intervals``)."""
    rule = BOUND_RULES.get(type(step))
    if rule is None:
        raise TypeError(f"no interval rule for the step {type(step).__name__} (node {step.name!r}): "
                        "register one with bounds.bound_rule")
    return rule(step, *(intervals[name] for name in step.inputs))


def clip_box(q_inputs: Sequence[np.ndarray], type_ranges: Sequence[tuple[int, int]]) -> list[tuple]:
    """Per input, each element's clip range (two int64 arrays of the sample's shape).

    A table's columns (samples that are vectors) each get their own range on the inputset
    ``q_inputs``: a feature's values are its own, and a box that reaches every column's
    extremes at once is already far wider than the rows (the first layer's accumulators
    over it span 1.2 to 1.7 bits more than over the rows on the bundled data sets; over
    the integer types' box, up to 4.6 bits more: design notes). The elements of an image
    or a sequence share their input's integer type's range ``type_ranges``: a pixel the
    inputset leaves dark is not kept dark.
    """
    box_ = []
    for x, (low, high) in zip(q_inputs, type_ranges):
        x = np.asarray(x, dtype=np.int64)
        if x.ndim == 2:
            box_.append((x.min(axis=0), x.max(axis=0)))
        else:
            box_.append(tuple(np.full(x.shape[1:], int(end), dtype=np.int64) for end in (low, high)))
    return box_


def box(program, ranges: Sequence[tuple]) -> dict[str, Interval]:
    """Per program input, the interval of each element: ``ranges[i]``, two numbers or two arrays
    of the sample's shape (each element's own clip range)."""
    intervals = {}
    for name, shape, (low, high) in zip(program.input_names, program.sample_shapes, ranges):
        intervals[name] = tuple(np.array(np.broadcast_to(np.asarray(end, dtype=np.int64), (1, *shape)))
                                for end in (low, high))
    return intervals


def box_intervals(program, ranges: Sequence[tuple]) -> dict[str, Interval]:
    """Every input's and step output's interval, by name, over the box ``ranges`` (see ``box``)."""
    intervals = box(program, ranges)
    for step in program.steps:
        intervals[step.output] = propagate(step, intervals)
    return intervals


# a box of at most this many inputs is run whole: its values' ranges are exact, not intervals
MAX_ENUMERATED_INPUTS = 1 << 16
# ... as long as no step's values over it take more than this many integers
_MAX_ENUMERATED_VALUES = 1 << 24


class BoxBounds:
    """Each value's range over a box of inputs, added step by step (a pass may set a step's
    parameters, a lookup's rounding, before its range is taken).

    Interval rules are exact for one linear step but not for a composition: two neurons
    that never reach their extremes together still count as if they did. A box of at
    most ``MAX_ENUMERATED_INPUTS`` inputs (two 8-bit features) is run whole instead, and
    every range is exact: on a 2 -> 6 -> 6 -> 2 ReLU network at 3 bits, the second layer
    spans -22 to 21 (6 bits) over its 64 inputs, and -39 to 33 (7 bits) by intervals.
    A lookup's range holds the entries next to the ones read either way (see ``_lookup``).
    A larger box intersects each interval with the one its symbolic linear bounds give
    (``affine_bounds.py``): on TinyCNN's conv2, 30% narrower than by intervals alone.
    """

    def __init__(self, program, ranges: Sequence[tuple]):
        self.intervals = box(program, ranges)
        self.values: Optional[dict[str, np.ndarray]] = None
        lows, highs = [self.intervals[name][0] for name in program.input_names], \
            [self.intervals[name][1] for name in program.input_names]
        counts = np.concatenate([(high - low + 1).ravel() for low, high in zip(lows, highs)])
        # in log2: an image's box has far more inputs than a float can count
        if counts.size and np.sum(np.log2(counts)) <= np.log2(MAX_ENUMERATED_INPUTS):
            grid = np.indices(tuple(int(c) for c in counts)).reshape(len(counts), -1).T
            values, start = {}, 0
            for name, low in zip(program.input_names, lows):
                size = low.size
                values[name] = grid[:, start : start + size].reshape((-1, *low.shape[1:])) + low
                start += size
            self.values = values
        # a box too large to run whole: affine bounds of the inputs, intersected with the interval rules
        self.affines = affine_bounds.input_affines(program) if self.values is None else {}
        self.corners = affine_bounds.box_ends(program, self.intervals)

    def add(self, step: Step) -> Interval:
        """Take ``step``'s output range (its parameters final) and return it."""
        if self.values is not None:
            out = np.asarray(step.numpy(*(self.values[name] for name in step.inputs)), dtype=np.int64)
            if out.size > _MAX_ENUMERATED_VALUES:
                self.values = None  # from here on, interval rules
            else:
                self.values[step.output] = out
                interval = (out.min(axis=0, keepdims=True), out.max(axis=0, keepdims=True))
                if isinstance(step, TableLookup):
                    rounded, unit = step.rounded(self.values[step.inputs[0]]), 1 << step.lsbs_to_remove
                    for neighbour in (rounded - unit, rounded + unit):
                        read = np.asarray(step.read(neighbour), dtype=np.int64)
                        interval = (np.minimum(interval[0], read.min(axis=0, keepdims=True)),
                                    np.maximum(interval[1], read.max(axis=0, keepdims=True)))
                self.intervals[step.output] = interval
                return interval
        return affine_bounds.tighten(step, self.intervals, self.affines, self.corners)


def box_bounds(program, ranges: Sequence[tuple]) -> dict[str, Interval]:
    """Every input's and step output's range over the box ``ranges`` (see ``box``): exact for a
    small box (``BoxBounds``), by interval rules intersected with symbolic linear bounds otherwise.
    What a ``QuantizedModule`` is sized for."""
    bounds = BoxBounds(program, ranges)
    for step in program.steps:
        bounds.add(step)
    return bounds.intervals


def span(interval: Interval) -> tuple[int, int]:
    """The lowest and highest value over all elements."""
    return int(np.min(interval[0])), int(np.max(interval[1]))


def width(interval: Interval) -> int:
    """Bits of the smallest integer type holding every element of ``interval``."""
    return bit_width(*span(interval))


def outside(interval: Interval, values: np.ndarray) -> np.ndarray:
    """Per row of the batch ``values``, whether any element leaves its interval."""
    values = np.asarray(values)
    beyond = (values < interval[0]) | (values > interval[1])
    return beyond.reshape(len(values), -1).any(axis=1)


def first_escape(program, intervals: dict[str, Interval], *q_inputs) -> Optional[str]:
    """The first value of the program that leaves its interval on ``q_inputs``, or None."""
    for name, values in program.values(*q_inputs).items():
        if name in intervals and np.any(outside(intervals[name], values)):
            return name
    return None


def sign_values(program, q_inputs: Sequence[np.ndarray]) -> list[str]:
    """Give the right integer type to every value the circuit reads as a number, before tracing on ``q_inputs``.

    concrete-python types a value signed only when the inputset it traces makes it
    negative. Linear steps compute modulo their width, so only the values read as
    numbers count: a lookup's input (its table is indexed by it) and an output
    (decrypted). One that can be negative over the input box but is not on ``q_inputs``
    is shifted to non-negative integers: a lookup by its own ``shift``, an output by a
    ``Shift`` step whose constant the output's offset takes back. Both are free in FHE.
    Returns the names of the values shifted.
    """
    if not program.value_bounds:
        return []
    values = program.values(*q_inputs)
    shifted = []
    for step in program.table_lookups:
        if step.lsbs_to_remove or step.gain is not None or step.spread_bounds is None:
            continue  # the rounding pass made it non-negative already
        low = step.spread_bounds[0]
        if low >= 0 or np.min(step.spread(values[step.inputs[0]])) < 0:
            continue
        step.shift = np.int64(-low) + (0 if step.shift is None else step.shift)
        step.spread_bounds = (0, step.spread_bounds[1] - low)
        step.input_bounds = (step.input_bounds[0] - low, step.input_bounds[1] - low)
        shifted.append(step.output)
    for out in program.outputs:
        low, high = program.value_bounds[out.source]
        if low >= 0 or np.min(values[out.source]) < 0:
            continue
        name = f"{out.source}.unsigned"
        program.steps.append(Shift("unsigned output", [out.source], name, constant=-low))
        program.value_bounds[name] = (0, high - low)
        out.offset = out.offset + out.scale * low
        out.source = name
        shifted.append(name)
    return shifted
