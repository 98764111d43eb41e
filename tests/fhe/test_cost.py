"""``QuantizedModule.cost()``: the circuit's own counts, the cost model, its calibration file."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fheestimators import FheCost, compile_torch_model
from fheestimators.fhe.cost import (
    COST_MODEL_ENV,
    DEFAULT_COST_MODEL,
    CircuitWork,
    CostModel,
    default_cost_model_path,
    estimate_cost,
    fit_cost_model,
)
from fheestimators.quantization.tabulate import tabulation_limit

X = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)


def tiny(hidden: int = 4, n_bits: int = 3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)).eval()
    with tabulation_limit(0):  # one lookup per neuron, so that width and bits show in the cost
        return compile_torch_model(net, X, n_bits=n_bits)


@pytest.fixture(autouse=True)
def no_calibration_file(tmp_path, monkeypatch):
    """The machine's own calibration must not change what these tests see."""
    monkeypatch.setenv(COST_MODEL_ENV, str(tmp_path / "absent.json"))


@pytest.fixture(scope="module")
def module():
    return tiny()


def test_cost_fields_are_the_circuits_own_counts(module):
    circuit, cost = module.fhe_circuit, module.cost()
    assert isinstance(cost, FheCost)
    assert cost.programmable_bootstraps == circuit.programmable_bootstrap_count > 0
    assert sum(count for _, count in cost.bootstrap_keys) == cost.programmable_bootstraps
    assert cost.key_switches == circuit.key_switch_count
    assert cost.evaluation_key_bytes == circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys
    assert 0 < cost.evaluation_key_bytes_compressed < cost.evaluation_key_bytes / 2
    assert cost.complexity == circuit.complexity
    assert cost.max_bit_width == circuit.graph.maximum_integer_bit_width()
    # one lookup per hidden neuron, reading the bits the report gives
    report = module.layer_reports()[0]
    assert cost.lookup_bit_widths == ((report.lookup_bits, 4),)
    ((n, N, k, levels), _), = cost.bootstrap_keys
    key = circuit.server.client_specs.program_info.get_keyset_info().bootstrap_keys()[0]
    assert (n, N, k, levels) == (key.input_lwe_dimension(), key.polynomial_size(), key.glwe_dimension(), key.level())
    assert cost.calibration == "default"
    work = CircuitWork.of(circuit)
    assert cost.seconds_per_sample == pytest.approx(DEFAULT_COST_MODEL.execute_seconds(work))
    assert cost.keygen_seconds == pytest.approx(DEFAULT_COST_MODEL.keygen_seconds(work))
    assert "seconds per encrypted sample" in str(cost) and f"{cost.programmable_bootstraps} bootstraps" in str(cost)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.seconds_per_sample = 0.0


def test_compressed_key_bytes_are_those_of_a_real_key_set():
    # the one key generation of these tests, on the smallest keys (2-bit weights: 12 MB compressed)
    module = tiny(n_bits=2)
    circuit = module.compile_for_deployment()
    circuit.keygen()
    serialized = len(circuit.keys.evaluation.serialize())
    assert module.cost().evaluation_key_bytes_compressed == pytest.approx(serialized, rel=1e-3)


def test_not_compiled_raises():
    from fheestimators import build_quantized_module

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="not compiled"):
        build_quantized_module(net, X).cost()


def test_predicted_time_grows_with_bootstraps_and_bit_width(module):
    wider, more_bits = tiny(hidden=16), tiny(n_bits=4)
    base = module.cost()
    assert wider.cost().programmable_bootstraps > base.programmable_bootstraps
    assert wider.cost().seconds_per_sample > base.seconds_per_sample
    assert more_bits.cost().max_bit_width > base.max_bit_width
    assert more_bits.cost().seconds_per_sample > base.seconds_per_sample
    assert more_bits.cost().keygen_seconds > base.keygen_seconds


def test_calibration_file_round_trip(module, tmp_path, monkeypatch):
    model = CostModel(0.5, 2e-10, 3e-3, 1.0, 3e-8, 1e-11, 1e-8, info={"machine": "test"})
    path = model.save(tmp_path / "sub" / "cost.json")
    loaded = CostModel.load(path)
    assert loaded == dataclasses.replace(model, source=str(path))  # source aside, equal coefficients
    assert loaded.info == {"machine": "test"}
    monkeypatch.setenv(COST_MODEL_ENV, str(path))
    assert default_cost_model_path() == path
    cost = module.cost()
    work = CircuitWork.of(module.fhe_circuit)
    assert cost.calibration == str(path)
    assert cost.seconds_per_sample == pytest.approx(0.5 + 2e-10 * work.complexity + 3e-3 * work.bootstraps)
    assert cost.keygen_seconds == pytest.approx(
        1.0 + 3e-8 * work.bootstrap_key_bytes + 1e-11 * work.bootstrap_key_polynomial_bytes
        + 1e-8 * work.keyswitch_key_bytes)
    assert estimate_cost(module.fhe_circuit, DEFAULT_COST_MODEL).calibration == "default"
    path.write_text('{"execute_intercept": 1.0}')
    with pytest.raises(ValueError, match="calibrate_cost.py"):
        module.cost()


def test_fit_recovers_the_coefficients_of_exact_data():
    truth = CostModel(0.05, 3e-10, 2e-3, 0.4, 4e-8, 5e-12, 1.5e-8)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(8):
        bsk, N = int(rng.uniform(1e7, 1e9)), 2 ** int(rng.integers(9, 14))
        work = CircuitWork(float(rng.uniform(1e8, 5e10)), int(rng.integers(4, 600)), bsk, bsk * N,
                           int(rng.uniform(1e7, 5e8)), 0, 0)
        rows.append({**dataclasses.asdict(work), "execute_s": truth.execute_seconds(work),
                     "keygen_s": truth.keygen_seconds(work)})
    fitted = fit_cost_model(rows)
    for name in ("execute_intercept", "execute_complexity", "execute_bootstrap", "keygen_intercept",
                 "keygen_bootstrap_key", "keygen_bootstrap_polynomial", "keygen_keyswitch_key"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-4), name
