"""``NBits`` settings and the uniform quantizers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fheestimators.quantization.quantizers import DEFAULT_MODEL_BITS, MAX_N_BITS, NBits, UniformQuantizer

# -- NBits ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 12, 16])
def test_nbits_from_int(n):
    if n == 1:
        with pytest.raises(ValueError, match="op_weights"):  # a 1-bit symmetric weight has no range
            NBits.parse(n)
        return
    bits = NBits.parse(n)
    assert (bits.model_inputs, bits.op_inputs, bits.op_weights) == (n, n, n)
    assert bits.model_outputs == max(n, DEFAULT_MODEL_BITS)


def test_nbits_from_numpy_int():
    assert NBits.parse(np.int64(6)) == NBits.parse(6)


def test_nbits_from_dict_defaults():
    bits = NBits.parse({"op_inputs": 3, "op_weights": 2})
    assert bits == NBits(model_inputs=3, op_inputs=3, op_weights=2, model_outputs=DEFAULT_MODEL_BITS)


def test_nbits_from_full_dict():
    bits = NBits.parse({"model_inputs": 7, "op_inputs": 4, "op_weights": 3, "model_outputs": 9})
    assert bits == NBits(model_inputs=7, op_inputs=4, op_weights=3, model_outputs=9)


@pytest.mark.parametrize(
    "n_bits, error",
    [
        (0, ValueError), (MAX_N_BITS + 1, ValueError), (-1, ValueError),
        ({"op_inputs": 3}, ValueError), ({"op_weights": 3}, ValueError), ({}, ValueError),
        ({"op_inputs": 3, "op_weights": 3, "typo": 1}, ValueError),
        ({"op_inputs": 0, "op_weights": 3}, ValueError),
        ({"op_inputs": 3, "op_weights": 17}, ValueError),
        ({"op_inputs": 3, "op_weights": 3, "model_inputs": 0}, ValueError),
        (True, TypeError), (2.0, TypeError), ("4", TypeError), (None, TypeError), ([4], TypeError),
        ({"op_inputs": "3", "op_weights": 3}, TypeError),
    ],
    ids=repr,
)
def test_nbits_invalid(n_bits, error):
    with pytest.raises(error):
        NBits.parse(n_bits)


# -- unsigned (calibrated) quantizer -------------------------------------------------------


def test_unsigned_range_contains_zero_and_zero_is_exact():
    for values in (np.array([2.0, 5.0]), np.array([-5.0, -2.0]), np.array([-1.0, 3.0])):
        q = UniformQuantizer.unsigned(values, 4)
        assert (q.q_min, q.q_max) == (0, 15)
        assert q.n_bits == 4
        assert q.dequantize(q.quantize(0.0)) == 0.0
        low, high = q.dequantize(q.q_min), q.dequantize(q.q_max)
        assert low <= 0.0 <= high


def test_unsigned_positive_values_start_at_zero():
    q = UniformQuantizer.unsigned(np.array([1.0, 3.0]), 2)
    assert q.zero_point == 0
    assert q.scale == pytest.approx(1.0)
    np.testing.assert_array_equal(q.quantize(np.array([0.0, 1.0, 2.0, 3.0, 10.0, -4.0])), [0, 1, 2, 3, 3, 0])


def test_unsigned_constant_zero_values():
    q = UniformQuantizer.unsigned(np.zeros(5), 3)
    assert np.isfinite(q.scale) and q.scale > 0
    np.testing.assert_array_equal(q.dequantize(q.quantize(np.zeros(5))), np.zeros(5))


def test_unsigned_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        UniformQuantizer.unsigned(np.array([]), 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        UniformQuantizer.unsigned(np.array([1.0, np.nan]), 4)


def test_quantize_clips_outside_the_range():
    q = UniformQuantizer.unsigned(np.array([-1.0, 1.0]), 3)
    out = q.quantize(np.array([-100.0, 100.0]))
    np.testing.assert_array_equal(out, [q.q_min, q.q_max])
    assert out.dtype == np.int64


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False)
value_arrays = hnp.arrays(np.float64, st.integers(1, 40), elements=finite)


@settings(max_examples=150, deadline=None)
@given(values=value_arrays, n_bits=st.integers(1, 16))
def test_unsigned_round_trip_error_is_at_most_half_a_step(values, n_bits):
    q = UniformQuantizer.unsigned(values, n_bits)
    assert q.q_min == 0 and q.q_max == 2**n_bits - 1
    assert 0 <= q.zero_point <= q.q_max
    codes = q.quantize(values)
    assert codes.min() >= q.q_min and codes.max() <= q.q_max
    error = np.abs(q.dequantize(codes) - values)
    assert np.all(error <= q.scale / 2 * (1 + 1e-9) + 1e-12)
    assert q.dequantize(q.quantize(0.0)) == 0.0


# -- symmetric (weight) quantizer -----------------------------------------------------------


@pytest.mark.parametrize("n_bits", [2, 3, 4, 8])
def test_symmetric_weights(n_bits):
    weights = np.array([-0.8, -0.1, 0.0, 0.3, 0.5])
    q = UniformQuantizer.symmetric(weights, n_bits)
    half = 2 ** (n_bits - 1)
    assert (q.zero_point, q.q_min, q.q_max) == (0, -half, half - 1)
    codes = q.quantize(weights)
    assert codes[2] == 0
    # the most negative weight uses the bottom of the range
    assert codes.min() == -half
    assert np.all(np.abs(q.dequantize(codes) - weights) <= q.scale / 2 + 1e-12)


def test_symmetric_is_odd_inside_the_range():
    weights = np.linspace(-1.0, 1.0, 21)
    q = UniformQuantizer.symmetric(weights, 6)
    codes = q.quantize(weights[1:-1])
    np.testing.assert_array_equal(codes, -codes[::-1])


def test_symmetric_all_zero_weights():
    q = UniformQuantizer.symmetric(np.zeros((3, 2)), 4)
    assert q.scale > 0
    np.testing.assert_array_equal(q.quantize(np.zeros((3, 2))), np.zeros((3, 2)))


def test_symmetric_rejects_nan():
    with pytest.raises(ValueError, match="NaN or inf"):
        UniformQuantizer.symmetric(np.array([0.1, np.inf]), 4)


@settings(max_examples=150, deadline=None)
@given(values=value_arrays, n_bits=st.integers(2, 16))
def test_symmetric_round_trip_error_is_at_most_half_a_step(values, n_bits):
    q = UniformQuantizer.symmetric(values, n_bits)
    assert q.zero_point == 0
    assert q.q_min == -(2 ** (n_bits - 1)) and q.q_max == 2 ** (n_bits - 1) - 1
    codes = q.quantize(values)
    assert codes.min() >= q.q_min and codes.max() <= q.q_max
    error = np.abs(q.dequantize(codes) - values)
    assert np.all(error <= q.scale / 2 * (1 + 1e-9) + 1e-12)
    np.testing.assert_array_equal(q.quantize(np.zeros(2)), [0, 0])
