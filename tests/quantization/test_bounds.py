"""Interval bounds over the clip box, and the three modes agreeing on every row a client can send.

The rules first: integers drawn inside a box never leave the interval a rule computes.
Then the property the bounds are for: on random rows of a compiled module's clip box
(each input within ``input_ranges``), ``fhe="disable"`` and ``fhe="simulate"`` agree at a
negligible ``p_error`` for an MLP estimator, a small CNN and a tabulated module, and
``fhe="execute"`` with them on a small circuit.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fheestimators import NeuralNetClassifier, compile_torch_model
from fheestimators.fhe.execution import LookupNoise
from fheestimators.quantization import bounds
from fheestimators.quantization.program import IntegerProgram, Output
from fheestimators.quantization.quantizers import UniformQuantizer
from fheestimators.quantization.steps import (
    AddSub, Conv, Index, MatMul, ReduceSum, Reshape, Shift, TableLookup,
)
from fheestimators.quantization.tabulate import tabulation_limit

NEGLIGIBLE_P_ERROR = 1e-12
RULES = settings(max_examples=40, deadline=None, derandomize=True)
MODES = settings(max_examples=12, deadline=None, derandomize=True)


# -- the rules -----------------------------------------------------------------------
@st.composite
def boxes(draw, shape):
    """A per-element integer box of ``shape`` (batch axis of 1), and a batch of integers inside it."""
    size = int(np.prod(shape))
    ends = np.array(draw(st.lists(st.tuples(st.integers(-60, 60), st.integers(0, 40)), min_size=size,
                                  max_size=size)))
    low = ends[:, 0].reshape((1, *shape))
    high = (ends[:, 0] + ends[:, 1]).reshape((1, *shape))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    inside = rng.integers(low, high + 1, size=(32, *shape))
    # the corners too: where linear steps reach their bounds
    corners = np.where(rng.random((8, *shape)) < 0.5, low, high)
    return (low, high), np.concatenate([inside, corners])


def _within(interval, values) -> bool:
    return not np.any(bounds.outside(interval, values))


weights = st.lists(st.integers(-7, 7), min_size=12, max_size=12).map(lambda w: np.array(w).reshape(4, 3))


@RULES
@given(box=boxes((4,)), weight=weights, left=st.booleans())
def test_a_weighted_sum_stays_within_its_interval_and_reaches_it(box, weight, left):
    (low, high), x = box
    if left:
        step, x, low, high = MatMul("mm", ["x"], "y", weight=weight.T, left=True), x[..., None], low[..., None], \
            high[..., None]
    else:
        step = MatMul("mm", ["x"], "y", weight=weight)
    interval = bounds.propagate(step, {"x": (low, high)})
    assert _within(interval, step.numpy(x))
    # positive weights at the high end, negative at the low end: that corner is an input
    corner = np.where(weight > 0, high.reshape(4, 1), low.reshape(4, 1))  # per output column
    reached = [step.numpy(corner[None, :, j] if not left else corner[None, :, j, None]).ravel()[j]
               for j in range(3)]
    np.testing.assert_array_equal(reached, interval[1].ravel())


@RULES
@given(box=boxes((1, 4, 4)), weight=st.lists(st.integers(-3, 3), min_size=18, max_size=18),
       stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]))
def test_a_convolution_stays_within_its_interval(box, weight, stride, pad):
    (low, high), x = box
    step = Conv("conv", ["x"], "y", weight=np.array(weight).reshape(2, 1, 3, 3), pads=(pad,) * 4,
                strides=(stride, stride), dilations=(1, 1))
    assert _within(bounds.propagate(step, {"x": (low, high)}), step.numpy(x))


@RULES
@given(a=boxes((5,)), b=boxes((5,)), subtract=st.booleans(), constant=st.integers(-100, 100))
def test_sums_differences_and_shifts_stay_within_their_intervals(a, b, subtract, constant):
    (a_interval, a_x), (b_interval, b_x) = a, b
    step = AddSub("add", ["a", "b"], "c", subtract=subtract)
    assert _within(bounds.propagate(step, {"a": a_interval, "b": b_interval}), step.numpy(a_x, b_x))
    shift = Shift("shift", ["a"], "s", constant=constant)
    assert _within(bounds.propagate(shift, {"a": a_interval}), shift.numpy(a_x))


@RULES
@given(box=boxes((2, 3)), positions=st.lists(st.integers(-1, 5), min_size=4, max_size=4))
def test_moved_and_summed_elements_stay_within_their_intervals(box, positions):
    interval, x = box
    for step in (ReduceSum("sum", ["x"], "y", axes=(2,), keepdims=True),
                 Reshape("flat", ["x"], "y", sample_shape=(6,)),
                 Index("gather", ["x"], "y", positions=np.array(positions).reshape(2, 2))):
        assert _within(bounds.propagate(step, {"x": interval}), step.numpy(x))


@RULES
@given(box=boxes((3,)), lsbs=st.integers(0, 3), gain=st.lists(st.integers(1, 4), min_size=3, max_size=3),
       shift=st.integers(0, 300), table_seed=st.integers(0, 1000))
def test_a_lookup_stays_within_its_interval_rounded_or_not(box, lsbs, gain, shift, table_seed):
    interval, x = box
    table = np.random.default_rng(table_seed).integers(-50, 50, size=(2048, 3))

    def function(q):  # any table, a different one per element
        return table[np.clip(np.asarray(q, dtype=np.int64) + 1024, 0, 2047), np.arange(3)]

    step = TableLookup("lut", ["x"], "y", function=function, lsbs_to_remove=lsbs, sample_shape=(1, 3),
                       gain=np.array([gain]), shift=np.full((1, 3), shift))
    out = bounds.propagate(step, {"x": interval})
    assert _within(out, step.numpy(x))
    assert _within(bounds.rounded_bounds(step, interval), step.rounded(x))
    assert _within(bounds.spread_bounds(step, interval), step.spread(x))
    # a bootstrap's mistake reads the next entry: within the interval too
    assert _within(out, step.read(step.rounded(x) + (1 << lsbs)))


def test_a_step_without_a_rule_is_refused():
    class Opaque(Shift):
        pass

    with pytest.raises(TypeError, match="no interval rule"):
        bounds.propagate(Opaque("opaque", ["x"], "y"), {"x": (np.zeros((1, 1)), np.ones((1, 1)))})


def test_the_box_of_a_program_holds_every_value_it_computes():
    steps = [MatMul("fc1", ["x"], "a", weight=np.array([[3, -2, 1], [-1, 4, 2]])),
             TableLookup("act", ["a"], "b", function=lambda q: np.maximum(q, 0) // 3, sample_shape=(1, 3)),
             MatMul("fc2", ["b"], "c", weight=np.array([[1], [-2], [3]]))]
    program = IntegerProgram(["x"], [UniformQuantizer(1.0, 0, -8, 7)], steps, [Output("c", 1.0, 0.0)],
                             sample_shapes=[(2,)])
    intervals = bounds.box_intervals(program, [(-8, 7)])
    every = np.stack(np.meshgrid(np.arange(-8, 8), np.arange(-8, 8)), -1).reshape(-1, 2)
    assert bounds.first_escape(program, intervals, every) is None
    # exact for the first layer (every corner is an input), sound after it
    values = program.values(every)
    np.testing.assert_array_equal(values["a"].min(0), intervals["a"][0][0])
    np.testing.assert_array_equal(values["a"].max(0), intervals["a"][1][0])
    assert bounds.first_escape(program, intervals, np.array([[9, -9]])) == "x"


# -- the three modes on the clip box -------------------------------------------------
def _box_rows(module, seed: int, n_rows: int) -> tuple:
    """Integer rows inside the module's clip box (each element within its own range): half
    uniform, half at its corners."""
    rng = np.random.default_rng(seed)
    rows = []
    for low, high in module.program.input_box:
        uniform = rng.integers(low, high + 1, size=(n_rows, *low.shape))
        corners = np.where(rng.random((n_rows, *low.shape)) < 0.5, low, high)
        rows.append(np.concatenate([uniform, corners]))
    return tuple(rows)


def _errorless(module) -> LookupNoise:
    """The simulation without bootstrap errors: it differs from ``disable`` only where a value wraps around."""
    return LookupNoise(0.0, LookupNoise.from_circuit(module.fhe_circuit).bit_widths)


def _assert_modes_agree(module, q):
    clear = module.quantized_forward(*q)
    np.testing.assert_array_equal(module.quantized_forward(*q, fhe="simulate"), clear)
    np.testing.assert_array_equal(module.program.run(*q, round_lookup=_errorless(module)), clear)


def _skewed_data(n_rows=300, seed=0):
    """Features of very different ranges (one heavy-tailed): the clip box reaches far beyond the rows."""
    rng = np.random.default_rng(seed)
    X = np.stack([rng.normal(size=n_rows), rng.exponential(size=n_rows) ** 2, rng.uniform(-1, 1, n_rows)], axis=1)
    return X.astype(np.float32), (X[:, 0] + X[:, 2] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def estimator():
    X, y = _skewed_data()
    common = dict(max_epochs=4, module__n_hidden=6, module__n_w_bits=4, module__n_a_bits=4, random_state=0)
    exact = NeuralNetClassifier(**common, rounding_threshold_bits={"n_bits": 5, "method": "exact"},
                                p_error=NEGLIGIBLE_P_ERROR).fit(X, y)
    # the estimators' default rounding is approximate: its reads near a bin's middle go either way
    approximate = NeuralNetClassifier(**common, p_error=NEGLIGIBLE_P_ERROR).fit(X, y)
    return exact, approximate


@MODES
@given(seed=st.integers(0, 2**32 - 1))
def test_an_estimator_simulates_every_row_of_its_clip_box_as_it_computes_it(estimator, seed):
    exact, approximate = estimator
    module = exact.quantized_module_
    # a table's box: each feature within its range on the inputset, inside its integer type
    (low, high), = module.program.input_box
    assert low.shape == high.shape == (3,) and np.any(low != low[0])
    (type_low, type_high), = module.input_ranges
    assert type_low <= low.min() and high.max() <= type_high
    _assert_modes_agree(module, _box_rows(module, seed, 16))
    # approximate rounding: without the bootstraps' errors, no value wraps around
    module = approximate.quantized_module_
    q = _box_rows(module, seed, 16)
    np.testing.assert_array_equal(module.program.run(*q, round_lookup=_errorless(module)),
                                  module.quantized_forward(*q))
    # floats beyond the box are clipped to it, in every mode: by the input quantizer, which
    # a deployed client applies too
    quantizer = module.program.input_quantizers[0]
    rows = ((q[0] - quantizer.zero_point) * quantizer.scale * 3).astype(np.float32)
    (low, high), = module.program.input_box
    assert np.all((module.quantize_input(rows) >= low) & (module.quantize_input(rows) <= high))
    np.testing.assert_array_equal(quantizer.quantize(rows), module.quantize_input(rows))
    # the estimator takes the features as fit did: its scaler maps them to the network's inputs
    features = approximate.input_scaler_.inverse_transform(rows).astype(np.float32)
    network_rows = approximate._network_input(features)
    errorless = module.program.run(module.quantize_input(network_rows), round_lookup=_errorless(module))
    labels = approximate.classes_[module.dequantize_output(errorless).argmax(1)]
    np.testing.assert_array_equal(approximate.predict(features, fhe="disable"), labels)


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 2 * 2, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    inputset = torch.randn(100, 1, 4, 4) * torch.linspace(0.2, 1.0, 4)  # columns of several ranges
    return compile_torch_model(TinyConvNet().eval(), inputset, n_bits=3, p_error=NEGLIGIBLE_P_ERROR,
                               rounding_threshold_bits={"n_bits": 4, "method": "exact"})


@MODES
@given(seed=st.integers(0, 2**32 - 1))
def test_a_cnn_simulates_every_row_of_its_clip_box_as_it_computes_it(cnn, seed):
    _assert_modes_agree(cnn, _box_rows(cnn, seed, 16))


@pytest.fixture(scope="module")
def tabulated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 3))
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    module = compile_torch_model(model, x, n_bits=3, p_error=NEGLIGIBLE_P_ERROR)
    assert module.program.input_domains is not None  # one lookup per output on the packed inputs
    return module


@MODES
@given(seed=st.integers(0, 2**32 - 1))
def test_a_tabulated_module_simulates_every_row_of_its_clip_box_as_it_computes_it(tabulated, seed):
    _assert_modes_agree(tabulated, _box_rows(tabulated, seed, 8))


def test_every_value_of_a_compiled_module_holds_its_clip_box(cnn, tabulated, estimator):
    for module in (cnn, tabulated, estimator[0].quantized_module_):
        intervals = bounds.box_bounds(module.program, module.program.input_box)
        assert bounds.first_escape(module.program, intervals, *_box_rows(module, 0, 64)) is None
        # what concrete-python was told: each value's range over the box, not over the inputset
        widths = module.program.step_bit_widths()
        assert all(width >= bounds.width(intervals[step.output]) for step, width in widths)
        assert module.max_bit_width >= max(width for _, width in widths)


def _corners(module) -> np.ndarray:
    """The four corners of a two-feature module's clip box."""
    (low, high), = module.program.input_box
    return np.array([[low[0], low[1]], [low[0], high[1]], [high[0], low[1]], [high[0], high[1]]])


def test_a_small_circuit_executes_the_corners_of_its_clip_box_as_it_computes_them():
    # a few neurons on few bits (3-bit integers at most): keys in seconds; untabulated: the layers' lookups
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(size=200), rng.exponential(size=200)], axis=1).astype(np.float32)
    with tabulation_limit(0):
        module = compile_torch_model(model, x, n_bits=2, p_error=1e-9)
    assert module.program.table_lookups and module.fhe_circuit.graph.maximum_integer_bit_width() <= 6
    corners = _corners(module)
    clear = module.quantized_forward(corners)
    np.testing.assert_array_equal(module.quantized_forward(corners, fhe="simulate"), clear)
    np.testing.assert_array_equal(module.quantized_forward(corners, fhe="execute"), clear)


@pytest.mark.parametrize("hidden", [False, True], ids=["output", "lookup"])
def test_a_value_negative_only_beyond_the_inputset_is_read_with_its_sign(hidden):
    """concrete-python types a value from the rows it traces: one that the box makes negative and
    the inputset does not is shifted (bounds.sign_values), or FHE would read it unsigned."""
    rng = np.random.default_rng(0)
    x2 = rng.uniform(0, 1, 300)
    x = np.stack([x2 + rng.uniform(0, 1, 300), x2], axis=1).astype(np.float32)  # x1 - x2 >= 0 on every row
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)) if hidden else nn.Linear(2, 1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.tensor([[1.0, -1.0]]) if layer.in_features == 2 else torch.ones(1, 1))
                layer.bias.zero_()
    with tabulation_limit(0):
        module = compile_torch_model(model, x, n_bits=3, p_error=1e-9)
    corners = _corners(module)
    clear = module.quantized_forward(corners)
    # concrete-python's own simulation computes what FHE computes, in the circuit's integer types
    faithful = np.concatenate([module.fhe_circuit.simulate(row[None]) for row in corners])
    np.testing.assert_array_equal(faithful, clear)
    if hidden:
        assert module.program.table_lookups[0].shift is not None
    else:
        assert module.program.outputs[0].source.endswith(".unsigned")
        assert module.forward(np.array([[0.0, 2.0]], dtype=np.float32))[0, 0] < 0


@pytest.mark.parametrize("kind", ["box", "inputset"])
def test_sizing_for_the_inputset_only_lets_rows_of_the_box_wrap_around(kind):
    """``bounds.sizing("inputset")`` keeps the sizing of before: finer on many features, but
    rows the module accepts, in combinations the inputset never showed, wrap around."""
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=300), rng.exponential(size=300) ** 2, rng.uniform(-1, 1, 300)],
                 axis=1).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with bounds.sizing(kind), tabulation_limit(0):
        module = compile_torch_model(model, x, n_bits=4, p_error=NEGLIGIBLE_P_ERROR,
                                     rounding_threshold_bits={"n_bits": 4, "method": "exact"})
    (low, high), = module.input_ranges
    q = np.where(rng.random((200, 3)) < 0.5, low, high)  # the corners of the integer types' box
    differ = np.any(module.quantized_forward(q, fhe="simulate") != module.quantized_forward(q), axis=1)
    assert (module.program.input_box is None) == (kind == "inputset")
    assert (np.count_nonzero(differ) > 0) == (kind == "inputset")


def test_an_unknown_sizing_is_refused():
    with pytest.raises(ValueError, match="'box' or 'inputset'"):
        with bounds.sizing("rows"):
            pass
