"""Noise variances of the integer program, and the cap they put on rounding's gain."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fheestimators.quantization.noise import noise_variances
from fheestimators.quantization.program import IntegerProgram, Output
from fheestimators.quantization.quantizers import UniformQuantizer
from fheestimators.quantization.rounding import NOISE_HEADROOM, apply_rounding
from fheestimators.quantization.steps import AddSub, Index, MatMul, Step, TableLookup
from fheestimators.torch.compile import build_quantized_module, compile_torch_model


def _program(steps, n_inputs=2):
    return IntegerProgram(["x"], [UniformQuantizer(1.0, 0, 0, 255)], steps, [Output(steps[-1].output, 1.0, 0.0)],
                          sample_shapes=[(n_inputs,)])


def test_a_linear_layer_sums_its_inputs_noise_weighted_by_the_squared_weights():
    first = MatMul("fc1", ["x"], "a", weight=np.array([[1, 2, 0], [3, -4, 1]]))
    lookup = TableLookup("act", ["a"], "b", function=lambda q: q, sample_shape=(3,))
    second = MatMul("fc2", ["b"], "c", weight=np.array([[2], [-1], [5]]))
    variances = noise_variances(_program([first, lookup, second]))
    np.testing.assert_array_equal(variances["a"], [[1 + 9, 4 + 16, 1]])
    np.testing.assert_array_equal(variances["b"], [[1, 1, 1]])  # a bootstrap's output is fresh
    np.testing.assert_array_equal(variances["c"], [[4 + 1 + 25]])


def test_a_difference_is_as_noisy_as_a_sum_and_moved_elements_keep_their_noise():
    scale = MatMul("scale", ["x"], "a", weight=np.array([[3, 0], [0, 1]]))
    diff = AddSub("diff", ["a", "x"], "d", subtract=True)
    swap = Index("swap", ["d"], "s", positions=np.array([1, 0, -1]))
    variances = noise_variances(_program([scale, diff, swap]))
    np.testing.assert_array_equal(variances["d"], [[9 + 1, 1 + 1]])
    np.testing.assert_array_equal(variances["s"], [[2, 10, 0]])


def test_a_step_without_a_noise_rule_leaves_the_variances_unknown():
    class Opaque(Step):
        def numpy(self, x):
            return x

    assert noise_variances(_program([Opaque("opaque", ["x"], "y")])) is None


def _narrow_element_program(weight_of_wide: int):
    """Element 0 spans the accumulator's range; element 1 only 16 values, its weight 1."""
    fc = MatMul("fc", ["x"], "a", weight=np.array([[weight_of_wide, 0], [0, 1]]))
    lookup = TableLookup("step", ["a"], "y", function=lambda q: (q >= np.array([[120, 7]])).astype(np.int64),
                         sample_shape=(2,))
    q = np.stack([np.arange(0, 256, 2) // weight_of_wide, np.arange(128) % 16], axis=1)
    return _program([fc, lookup]), lookup, q


def test_the_gain_stops_where_an_element_would_pass_the_noisiest_ones_noise():
    gains = {}
    for weight in (1, 8):
        program, lookup, q = _narrow_element_program(weight)
        apply_rounding(program, (q,), 4)
        gains[weight] = int(lookup.gain[0, 1])
        variance = noise_variances(program)["a"]
        assert gains[weight] ** 2 * variance[0, 1] <= NOISE_HEADROOM * variance.max()
    # a noisy neighbour leaves room for the full gain (16 fills the 8 bits); a quiet one does not
    assert gains[1] == int(np.sqrt(NOISE_HEADROOM)) < gains[8]


def _gains_within_headroom(module, n_bits: int) -> bool:
    """Every gain within the cap, in units of its bin: a gain taken at ``extra`` more bits acts as gain / 2**extra."""
    from fheestimators.quantization.bounds import box_bounds
    from fheestimators.quantization.rounding import _removed_bits

    variances = noise_variances(module.program)
    # each lookup is sized for its accumulator's range over the clip box of the inputs
    intervals = box_bounds(module.program, module.program.input_box)
    gained = [step for step in module.program.table_lookups if step.gain is not None]
    assert gained, "no lookup took a gain: the network does not test the cap"
    within = []
    for step in gained:
        extra = step.lsbs_to_remove - _removed_bits(intervals[step.inputs[0]], n_bits)
        effective = step.gain.astype(float) / 2**extra
        variance = variances[step.inputs[0]]
        within.append(np.all(effective**2 * variance.reshape(step.gain.shape) <= NOISE_HEADROOM * variance.max()))
    return all(within)


def test_compiled_networks_keep_every_gain_within_the_noise_headroom(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        # one neuron with small weights: it would take a large gain (0.02 of them quantize to 0:
        # a dead neuron, which takes no lookup)
        model[2].weight[0] *= 0.1
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    settings = dict(n_bits=5, rounding_threshold_bits=5)
    assert _gains_within_headroom(compile_torch_model(model, x, **settings), 5)

    # exact rounding keeps the gains free, as does a pass without the variances (the gains are
    # the built program's: these two need no circuit)
    assert not _gains_within_headroom(
        build_quantized_module(model, x, n_bits=5, rounding_threshold_bits={"n_bits": 5, "method": "exact"}), 5)
    monkeypatch.setattr("fheestimators.quantization.rounding.noise_variances", lambda program: None)
    assert not _gains_within_headroom(build_quantized_module(model, x, **settings), 5)
