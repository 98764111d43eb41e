"""Symbolic linear bounds over the clip box: sound on random programs, narrower than intervals where they must be.

Sound: on random small programs (convolutions or matrix products, lookups with rounding,
gain and shift, tables of any shape), random rows and corners of the box never leave the
intervals, with or without bootstrap mistakes (a lookup reading a neighbouring entry).
"""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fheestimators.quantization import affine_bounds, bounds
from fheestimators.quantization.program import IntegerProgram, Output
from fheestimators.quantization.quantizers import UniformQuantizer
from fheestimators.quantization.steps import AddSub, Conv, MatMul, Reshape, Shift, TableLookup

PROGRAMS = settings(max_examples=30, deadline=None, derandomize=True)


def _table(seed: int, shape: tuple, kind: int):
    """An element-wise function of a (maybe fractional) accumulator: a ReLU-like ramp, a clipped
    line, or a random table (neither monotone nor smooth)."""
    rng = np.random.default_rng(seed)
    entries = rng.integers(-40, 40, size=(4096, shape[-1]))
    scale = rng.integers(1, 4, size=shape)

    def function(q):
        q = np.floor(np.asarray(q, dtype=np.float64)).astype(np.int64)
        if kind == 0:
            return np.maximum(q, 0) // scale
        if kind == 1:
            return np.clip(q // scale, -9, 13)
        return entries[np.clip(q + 2048, 0, 4095), np.arange(shape[-1])]  # vectors only

    return function


def _lookup(draw, name, source, out, shape, seed):
    lsbs = draw(st.integers(0, 5))
    kind = draw(st.integers(0, 2 if len(shape) == 1 else 1))
    rng = np.random.default_rng(seed)
    gain = rng.integers(1, 4, size=(1, *shape)) if lsbs and draw(st.booleans()) else None
    shift = rng.integers(0, 60, size=(1, *shape)) if draw(st.booleans()) else None
    return TableLookup(name, [source], out, function=_table(seed, shape, kind), lsbs_to_remove=lsbs,
                       sample_shape=shape, gain=gain, shift=shift)


@st.composite
def programs(draw):
    """A random two-layer program on a small box, its box, and integer rows within it (uniform and corners)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        shape = (1, 5, 5)
        w1 = rng.integers(-3, 4, size=(2, 1, 2, 2))
        w2 = rng.integers(-3, 4, size=(2, 2, 2, 2))
        steps = [Conv("c1", ["x"], "a", weight=w1, pads=(0,) * 4, strides=(1, 1), dilations=(1, 1)),
                 _lookup(draw, "l1", "a", "b", (2, 4, 4), seed),
                 Conv("c2", ["b"], "c", weight=w2, pads=(1, 1, 0, 0), strides=(2, 1), dilations=(1, 1)),
                 Shift("s", ["c"], "d", constant=int(rng.integers(-20, 20))),
                 _lookup(draw, "l2", "d", "e", (2, 2, 4), seed + 1),
                 Reshape("flat", ["e"], "f", sample_shape=(16,)),
                 MatMul("fc", ["f"], "g", weight=rng.integers(-3, 4, size=(16, 3)))]
    else:
        shape = (6,)
        steps = [MatMul("fc1", ["x"], "a", weight=rng.integers(-5, 6, size=(6, 4))),
                 _lookup(draw, "l1", "a", "b", (4,), seed),
                 MatMul("fc2", ["b"], "c", weight=rng.integers(-5, 6, size=(4, 4))),
                 AddSub("res", ["c", "b"], "d", subtract=draw(st.booleans())),
                 _lookup(draw, "l2", "d", "e", (4,), seed + 1),
                 MatMul("fc3", ["e"], "g", weight=rng.integers(-5, 6, size=(4, 2)))]
    program = IntegerProgram(["x"], [UniformQuantizer(1.0, 0, -30, 39)], steps, [Output("g", 1.0, 0.0)],
                             sample_shapes=[shape])
    low = rng.integers(-30, 10, size=shape)
    high = low + rng.integers(0, 30, size=shape)
    rows = np.concatenate([rng.integers(low, high + 1, size=(200, *shape)),
                           np.where(rng.random((200, *shape)) < 0.5, low, high)])
    return program, (low, high), rows, seed


def _values_with_mistakes(program, rows, seed):
    """Every value, each lookup reading its entry one rounding unit off at random (as a bootstrap's mistake can)."""
    rng = np.random.default_rng(seed)

    def mistaken(step, spread):
        rounded = step.round(spread)
        return rounded + (1 << step.lsbs_to_remove) * rng.integers(-1, 2, size=rounded.shape)

    values = {"x": rows}
    for step in program.steps:
        args = [values[name] for name in step.inputs]
        if isinstance(step, TableLookup):
            values[step.output] = step.read(mistaken(step, step.spread(np.asarray(args[0], dtype=np.int64))))
        else:
            values[step.output] = step.numpy(*args)
    return values


@PROGRAMS
@given(case=programs())
def test_no_row_of_the_box_leaves_its_symbolic_bounds(case):
    program, box, rows, seed = case
    intervals = affine_bounds.affine_intervals(program, [box])
    assert bounds.first_escape(program, intervals, rows) is None
    for name, values in _values_with_mistakes(program, rows, seed).items():
        assert not np.any(bounds.outside(intervals[name], values)), name
    # never wider than the interval rules (they are intersected)
    rules = bounds.box_intervals(program, [box])
    for name, (low, high) in rules.items():
        assert np.all(intervals[name][0] >= low) and np.all(intervals[name][1] <= high)


@PROGRAMS
@given(lsbs=st.integers(0, 4), gain=st.lists(st.integers(1, 4), min_size=3, max_size=3), shift=st.integers(0, 80),
       kind=st.integers(0, 2), seed=st.integers(0, 1000))
def test_a_lookup_lies_between_its_two_lines_on_every_accumulator(lsbs, gain, shift, kind, seed):
    rng = np.random.default_rng(seed)
    low = rng.integers(-60, 20, size=(1, 3))
    high = low + rng.integers(0, 60, size=(1, 3))
    step = TableLookup("lut", ["x"], "y", function=_table(seed, (3,), kind), lsbs_to_remove=lsbs, sample_shape=(3,),
                       gain=np.array([gain]) if lsbs else None, shift=np.full((1, 3), shift))
    slope_low, c_low, slope_high, c_high = affine_bounds.lookup_lines(step, low, high)
    x = low + np.arange(int((high - low).max()) + 1)[:, None]
    x = np.minimum(x, high)  # every accumulator of each element (its last repeated)
    unit = 1 << lsbs
    for mistake in (-unit, 0, unit):
        f = step.lookup(step.rounded(x) + mistake)
        assert np.all(slope_low * x + c_low <= f + 1e-9) and np.all(f <= slope_high * x + c_high + 1e-9)
    # the constants are reached: each line touches an entry read at some accumulator
    reads = np.stack([step.lookup(step.rounded(x) + d) for d in (-unit, 0, unit)])
    assert np.all(np.isclose((reads - slope_low * x).min(axis=(0, 1)), c_low[0]) | (lsbs > 0))
    assert np.all(np.isclose((reads - slope_high * x).max(axis=(0, 1)), c_high[0]) | (lsbs > 0))


def _overlapping_convolutions() -> IntegerProgram:
    """``relu(x0 - x1) + relu(x1 - x2)`` along a row: both ReLUs read ``x1``, with opposite signs."""
    steps = [Conv("c1", ["x"], "a", weight=np.array([[[[1, -1]]]]), pads=(0,) * 4, strides=(1, 1), dilations=(1, 1)),
             TableLookup("relu", ["a"], "b", function=lambda q: np.maximum(q, 0), sample_shape=(1, 1, 7)),
             Conv("c2", ["b"], "c", weight=np.array([[[[1, 1]]]]), pads=(0,) * 4, strides=(1, 1), dilations=(1, 1))]
    return IntegerProgram(["x"], [UniformQuantizer(1.0, 0, 0, 15)], steps, [Output("c", 1.0, 0.0)],
                          sample_shapes=[(1, 1, 8)])


def test_two_overlapping_convolutions_get_narrower_bounds_than_intervals():
    program = _overlapping_convolutions()
    rules = bounds.box_intervals(program, [(0, 15)])
    symbolic = affine_bounds.affine_intervals(program, [(0, 15)])
    # intervals count both ReLUs at 16 at once (15 and a mistake's neighbour); they cannot be
    assert rules["c"][1].max() == 32
    assert symbolic["c"][1].max() < 32
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 16, size=(3000, 1, 1, 8)),
                           np.where(rng.random((3000, 1, 1, 8)) < 0.5, 0, 15)])
    assert bounds.first_escape(program, symbolic, rows) is None
    # the box is too large to run whole (16^8 rows): BoxBounds takes the symbolic bounds
    sized = bounds.box_bounds(program, [(0, 15)])
    np.testing.assert_array_equal(sized["c"][1], symbolic["c"][1])


def test_too_many_coefficients_fall_back_to_intervals(monkeypatch):
    program = _overlapping_convolutions()
    monkeypatch.setattr(affine_bounds, "MAX_COEFFICIENTS", 8 * 6)  # the input's identity fits, conv1's 8 x 7 not
    np.testing.assert_array_equal(affine_bounds.affine_intervals(program, [(0, 15)])["c"][1],
                                  bounds.box_intervals(program, [(0, 15)])["c"][1])


def test_a_lookup_too_long_to_read_whole_keeps_its_interval(monkeypatch):
    program = _overlapping_convolutions()
    relu = program.table_lookups[0]
    low, high = np.full((1, 1, 1, 7), -15), np.full((1, 1, 1, 7), 15)  # 31 values for each of 7 elements
    assert affine_bounds.lookup_lines(relu, low, high) is not None
    monkeypatch.setattr(affine_bounds, "MAX_LOOKUP_ENTRIES", 31 * 7 - 1)
    assert affine_bounds.lookup_lines(relu, low, high) is None
    # past the ReLU, the symbolic bounds are the interval rules' (no line bounds it)
    np.testing.assert_array_equal(affine_bounds.affine_intervals(program, [(0, 15)])["c"][1],
                                  bounds.box_intervals(program, [(0, 15)])["c"][1])
