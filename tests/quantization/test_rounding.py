"""Accumulator rounding before table lookups (``rounding_threshold_bits``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from concrete import fhe
from torch import nn

from fheestimators.quantization.rounding import parse_rounding
from fheestimators.torch.compile import build_quantized_module, compile_torch_model

N_BITS = 6
N_HIDDEN = 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, N_HIDDEN), nn.ReLU(), nn.Linear(N_HIDDEN, 3)).eval()


X = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))


def torch_output(model) -> np.ndarray:
    with torch.no_grad():
        return model(X).numpy().astype(np.float64)


def relative_error(y, reference) -> float:
    return float(np.abs(y - reference).max() / np.ptp(reference))


@pytest.fixture(scope="module")
def unrounded():
    model = make_model()
    module = build_quantized_module(model, X, n_bits=N_BITS)
    return model, module


def test_unrounded_accumulator_is_wide(unrounded):
    model, module = unrounded
    (report,) = module.layer_reports()
    assert report.lsbs_removed == 0
    assert report.lookup_bits == report.accumulator_bits > 8
    assert relative_error(module.forward(X.numpy()), torch_output(model)) < 0.05


@pytest.mark.parametrize("rounding", [4, {"n_bits": 4}, {"n_bits": 4, "method": "exact"},
                                      {"n_bits": 4, "method": "approximate"},
                                      {"n_bits": 4, "method": fhe.Exactness.EXACT}], ids=repr)
def test_fixed_rounding_to_4_bits(unrounded, rounding):
    model, base = unrounded
    module = build_quantized_module(model, X, n_bits=N_BITS, rounding_threshold_bits=rounding)
    (report,) = module.layer_reports()
    (base_report,) = base.layer_reports()
    assert report.lookup_bits <= 4
    # approximate rounding may widen the accumulator by up to 2 bits (fractional gains)
    assert base_report.accumulator_bits <= report.accumulator_bits <= base_report.accumulator_bits + 2
    assert report.lsbs_removed == report.accumulator_bits - 4 > 0
    assert report.table_lookups == N_HIDDEN
    # 16 levels per hidden unit instead of thousands: coarser, but still the same function
    assert relative_error(module.forward(X.numpy()), torch_output(model)) < 0.25


@pytest.mark.parametrize("rounding", [None, 16, 15], ids=repr)
def test_no_rounding_when_the_threshold_is_not_below_the_accumulator(unrounded, rounding):
    model, base = unrounded
    module = build_quantized_module(model, X, n_bits=N_BITS, rounding_threshold_bits=rounding)
    assert module.layer_reports()[0].lsbs_removed == 0
    np.testing.assert_array_equal(module.forward(X.numpy()), base.forward(X.numpy()))


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_compiled_rounding_to_4_bits(unrounded, method):
    model, _ = unrounded
    module = compile_torch_model(model, X, n_bits=N_BITS,
                                 rounding_threshold_bits={"n_bits": 4, "method": method})
    assert module.layer_reports()[0].lookup_bits <= 4
    pbs = module.fhe_circuit.programmable_bootstrap_count
    if method == "approximate":
        assert pbs == N_HIDDEN
    else:
        assert pbs >= N_HIDDEN  # exact rounding may spend extra bootstraps on the removed bits
        sample = X[:20].numpy()
        np.testing.assert_array_equal(module.forward(sample, fhe="simulate"),
                                      module.forward(sample, fhe="disable"))


def test_auto_rounding_removes_bits_and_keeps_accuracy(unrounded):
    model, base = unrounded
    module = build_quantized_module(model, X, n_bits=N_BITS,
                                    rounding_threshold_bits={"n_bits": "auto", "method": "approximate"})
    (report,) = module.layer_reports()
    assert report.lsbs_removed > 0
    assert report.lookup_bits < report.accumulator_bits
    reference = torch_output(model)
    base_error = relative_error(base.forward(X.numpy()), reference)
    assert relative_error(module.forward(X.numpy()), reference) <= base_error + 0.02
    assert relative_error(module.forward(X.numpy()), base.forward(X.numpy())) <= 0.02


def test_auto_rounding_compiles(unrounded):
    model, _ = unrounded
    module = compile_torch_model(model, X, n_bits=N_BITS,
                                 rounding_threshold_bits={"n_bits": "auto", "method": "approximate"})
    sample = X[:100].numpy()
    # simulate draws approximate rounding's mistakes: a lookup now and then reads the
    # neighbouring entry, so outputs stay close to the clear ones
    assert relative_error(module.forward(sample, fhe="simulate"), module.forward(sample)) < 0.1


@pytest.mark.parametrize(
    "rounding, error, match",
    [
        (1, ValueError, "out of range"),
        (0, ValueError, "out of range"),
        (17, ValueError, "out of range"),
        ({"n_bits": 4, "method": "bogus"}, ValueError, "method"),
        ({"bits": 4}, ValueError, "unknown rounding_threshold_bits key"),
        ("4", TypeError, "int or 'auto'"),
        (4.0, TypeError, "int or 'auto'"),
        (True, TypeError, "int or 'auto'"),
        ({"n_bits": "many"}, TypeError, "int or 'auto'"),
    ],
    ids=repr,
)
def test_invalid_rounding(rounding, error, match):
    with pytest.raises(error, match=match):
        parse_rounding(rounding)
    with pytest.raises(error, match=match):
        build_quantized_module(make_model(), X, n_bits=N_BITS, rounding_threshold_bits=rounding)


def test_parse_rounding_values():
    assert parse_rounding(None) is None
    assert parse_rounding(5) == ((5,), "approximate")
    assert parse_rounding({"n_bits": 5, "method": "EXACT"}) == ((5,), "exact")
    assert parse_rounding({"method": "exact"}) == (("auto",), "exact")
    assert parse_rounding({"n_bits": "auto"}) == (("auto",), "approximate")
    assert parse_rounding({"n_bits": 6, "method": fhe.Exactness.APPROXIMATE}) == ((6,), "approximate")
    assert parse_rounding([8, 7]) == ((8, 7), "approximate")
    assert parse_rounding({"n_bits": (np.int64(8), "auto"), "method": "exact"}) == ((8, "auto"), "exact")


@pytest.mark.parametrize("rounding, error, match", [
    ([], ValueError, "empty"),
    ({"n_bits": [8, 1]}, ValueError, "out of range"),
    ([8, 6.5], TypeError, "int or 'auto'"),
], ids=repr)
def test_invalid_per_lookup_rounding(rounding, error, match):
    with pytest.raises(error, match=match):
        parse_rounding(rounding)


def two_layer_reports(rounding):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, N_HIDDEN), nn.ReLU(), nn.Linear(N_HIDDEN, N_HIDDEN), nn.ReLU(),
                          nn.Linear(N_HIDDEN, 3)).eval()
    module = build_quantized_module(model, X, n_bits=N_BITS, rounding_threshold_bits=rounding)
    return [(report.lookup_bits, report.accumulator_bits - report.lsbs_removed) for report in module.layer_reports()]


@pytest.mark.parametrize("rounding, expected", [
    ([6, 4], [6, 4]),
    ({"n_bits": (6, 4, 3)}, [6, 4]),  # an entry beyond the network's lookups is unused
    ([5], [5, 5]),  # the last entry serves the further lookups
    (4, [4, 4]),
], ids=repr)
def test_per_lookup_rounding_follows_the_network_order(rounding, expected):
    reports = two_layer_reports(rounding)
    assert [kept for _, kept in reports] == expected
    assert all(bits <= kept for bits, kept in reports)


# -- aligning the rounding bins with the tables' steps ------------------------------
def _step_program(thresholds):
    """One lookup per element: 1 above that element's threshold, on 8-bit inputs."""
    from fheestimators.quantization.program import IntegerProgram, Output
    from fheestimators.quantization.quantizers import UniformQuantizer
    from fheestimators.quantization.steps import TableLookup

    thresholds = np.asarray(thresholds)[None, :]
    lookup = TableLookup("step", ["x"], "y", function=lambda q: (q >= thresholds).astype(np.int64),
                         sample_shape=(1, thresholds.size))
    program = IntegerProgram(["x"], [UniformQuantizer(1.0, 0, 0, 255)], [lookup], [Output("y", 1.0, 0.0)],
                             sample_shapes=[(thresholds.size,)])
    return program, lookup


def test_alignment_puts_each_threshold_on_a_rounding_boundary():
    from fheestimators.quantization.rounding import apply_rounding

    q = np.tile(np.arange(201), (2, 1)).T  # 8-bit inputs with room to shift
    program, lookup = _step_program([100, 37])
    exact = (q >= np.array([[100, 37]])).astype(np.int64)
    apply_rounding(program, (q,), 4)  # 8-bit inputs rounded to 4 bits: bins of 16
    assert lookup.lsbs_to_remove == 4
    np.testing.assert_array_equal(program.run(q), exact)
    assert lookup.shift is not None and lookup.shift.shape == (1, 2)

    # the same rounding without the shift moves both thresholds to a bin edge
    lookup.shift = None
    assert np.count_nonzero(program.run(q) != exact) > 0


def test_rounding_never_reads_more_bits_than_asked():
    from fheestimators.quantization.rounding import apply_rounding

    # 256 values rounded half up to 16 bins of 16 would send the top half-bin to a 17th:
    # one more bit is removed instead (bins of 32), and the table still reads 4 bits
    q = np.arange(256)[:, None]
    program, lookup = _step_program([250])
    apply_rounding(program, (q,), 4)
    assert lookup.lsbs_to_remove == 5
    rounded = lookup.rounded(q)
    assert rounded.min() >= 0 and rounded.max() < 2 ** (4 + lookup.lsbs_to_remove)
    assert (rounded >> lookup.lsbs_to_remove).max() < 16


def test_alignment_keeps_the_rounded_value_within_the_bit_width():
    from fheestimators.quantization.rounding import apply_rounding

    # bins of 16 have edges at 8 + 16k: the step at 229 needs a shift of +3 or -13, and
    # +3 would take 245 to 248, which rounds up to 256 (9 bits)
    q = np.arange(20, 246)[:, None]
    program, lookup = _step_program([229])
    apply_rounding(program, (q,), 4)
    np.testing.assert_array_equal(program.run(q), (q >= 229).astype(np.int64))
    assert int(lookup.shift[0, 0]) == -13
    assert lookup.rounded(q).max() <= 255


def test_alignment_in_fhe_matches_the_clear_run():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(4))
    module = compile_torch_model(model, x, n_bits=5, rounding_threshold_bits={"n_bits": 4, "method": "exact"})
    assert any(step.shift is not None for step in module.program.table_lookups)
    np.testing.assert_array_equal(module.forward(x[:2].numpy(), fhe="execute"), module.forward(x[:2].numpy()))


def test_gain_spreads_an_element_with_a_narrow_range(monkeypatch):
    from fheestimators.quantization.rounding import apply_rounding

    # both elements are equally noisy here: lift the noise cap (tested in test_noise.py)
    monkeypatch.setattr("fheestimators.quantization.rounding.NOISE_HEADROOM", 1e6)
    # element 0 spans the 8-bit range; element 1 only 0..15, with its step at 7
    q = np.stack([np.arange(0, 256, 2), np.arange(128) % 16], axis=1)
    program, lookup = _step_program([120, 7])  # 120 is already on a bin edge
    exact = (q >= np.array([[120, 7]])).astype(np.int64)
    apply_rounding(program, (q,), 4)
    assert lookup.gain is not None and lookup.gain[0, 0] == 1 and lookup.gain[0, 1] > 1
    np.testing.assert_array_equal(program.run(q), exact)
    spread = lookup.spread(q)
    # element 0's 128 values need 9 bits to be read as 4 (see test_rounding_never_reads_more_bits_than_asked)
    assert lookup.lsbs_to_remove == 5
    assert spread.min() >= 0 and spread.max() <= 2**9 - 1 - 2**4  # still 9 bits, rounded

    lookup.gain = lookup.shift = None  # rounding alone sees element 1 as 0 or 16
    assert np.count_nonzero(program.run(q)[:, 1] != exact[:, 1]) > 0


@pytest.mark.parametrize("method", ["approximate", "exact"])
def test_a_wider_accumulator_lets_gains_act_as_fractions(monkeypatch, method):
    from fheestimators.quantization import rounding

    monkeypatch.setattr(rounding, "NOISE_HEADROOM", 1e6)  # equally noisy elements: no cap here
    # element 0 sets the width (8 bits); element 1 spans 0..150, 59% of the range: no
    # integer gain above 1 fits, but 3 at 9 bits (3/2) or 6 at 10 bits (6/4) does
    q = np.stack([np.arange(256) * 239 // 255, np.arange(256) * 150 // 255], axis=1)
    function = lambda v: v // 3  # noqa: E731 - a table that changes every few values
    misreads = {}
    for extra_bits in (0, 2):
        monkeypatch.setattr(rounding, "FRACTIONAL_GAIN_BITS", extra_bits)
        program, lookup = _step_program([0, 0])
        lookup.function = function
        rounding.apply_rounding(program, (q,), {"n_bits": 4, "method": method})
        misreads[extra_bits] = int(np.count_nonzero(program.run(q) != function(q)))
        read = lookup.rounded(q) >> lookup.lsbs_to_remove
        assert read.min() >= 0 and read.max() < 16  # still 4 bits read
        if extra_bits:
            wider = lookup.lsbs_to_remove > 4
            assert wider == (method == "approximate")  # exact rounding pays a bootstrap per removed bit
    if method == "approximate":
        assert misreads[2] < misreads[0]
    else:
        assert misreads[2] == misreads[0]


def test_auto_rounding_keeps_the_decisions_on_the_calibration_data():
    from fheestimators.quantization.rounding import AUTO_MIN_BITS, AUTO_TOLERANCE

    # rows that fill their clip box (a square): rounding is sized for the whole box, and on
    # Gaussian rows its corners, far from every row, would cost 'auto' up to a bit
    x = torch.rand(200, 2, generator=torch.Generator().manual_seed(1)) * 4 - 2
    model = make_model()
    base = build_quantized_module(model, x, n_bits=N_BITS)
    module = build_quantized_module(model, x, n_bits=N_BITS, rounding_threshold_bits={"n_bits": "auto"})
    (lookup,) = module.program.table_lookups
    assert lookup.lsbs_to_remove > 0
    assert module.layer_reports()[0].lookup_bits >= AUTO_MIN_BITS
    agree = np.mean(module.forward(x.numpy()).argmax(1) == base.forward(x.numpy()).argmax(1))
    assert agree >= 1 - AUTO_TOLERANCE
    # one bit fewer, unaligned, changes more decisions
    lookup.lsbs_to_remove += 1
    lookup.gain = lookup.shift = None
    assert np.mean(module.forward(x.numpy()).argmax(1) == base.forward(x.numpy()).argmax(1)) < agree


def test_auto_rounding_judges_the_dequantized_outputs(untabulated):
    from fheestimators.quantization.rounding import AUTO_TOLERANCE

    # seed 7: judged on the integer accumulators, 'auto' would keep this network's accumulators whole
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    # the output biases are of the size of the logits' spread: integer accumulators alone
    # (without the bias the dequantization adds) would not say what the model decides
    base = build_quantized_module(model, X, n_bits=4, rounding_threshold_bits=None)
    module = build_quantized_module(model, X, n_bits=4, rounding_threshold_bits={"n_bits": "auto"})
    decided = base.forward(X.numpy()).argmax(1)
    assert len(set(decided)) > 1
    (lookup,) = module.program.table_lookups
    assert lookup.lsbs_to_remove > 0
    assert np.mean(module.forward(X.numpy()).argmax(1) == decided) >= 1 - AUTO_TOLERANCE
