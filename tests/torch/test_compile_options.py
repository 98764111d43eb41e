"""compile_torch_model's options: artifacts, verbose, show_mlir, p_error, encryption status."""
import numpy as np
import pytest
import torch
from torch import nn

from fheestimators import DebugArtifacts
from fheestimators.torch.compile import compile_torch_model

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
X = torch.randn(50, 2)


def test_artifacts_record_every_stage(tmp_path, capsys, untabulated):
    artifacts = DebugArtifacts(tmp_path / "art")
    module = compile_torch_model(MODEL, X, n_bits=3, artifacts=artifacts, verbose=True, show_mlir=True)
    out = capsys.readouterr().out
    assert "lookup: Relu" in out and "bootstraps" in out  # the per-layer report
    assert "func.func" in out  # the MLIR
    assert [n.op_type for n in artifacts.onnx_model.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert "lookup: Relu" in artifacts.quantized_graph
    assert artifacts.mlir and "func.func" in artifacts.mlir
    folder = artifacts.export()
    assert (folder / "model.onnx").exists() and (folder / "circuit.mlir").exists()
    assert module.fhe_circuit.programmable_bootstrap_count == 3


def test_p_error_reaches_the_circuit():
    module = compile_torch_model(MODEL, X, n_bits=3, p_error=0.01)
    assert module.fhe_circuit.p_error <= 0.01 + 1e-12
    with pytest.raises(ValueError, match="not both"):
        compile_torch_model(MODEL, X, n_bits=3, p_error=0.01, global_p_error=0.01)


def test_inputs_encryption_status_is_checked():
    with pytest.raises(ValueError, match="entries"):
        compile_torch_model(MODEL, X, n_bits=3, inputs_encryption_status=["encrypted", "clear"])
    with pytest.raises(ValueError, match="encrypted"):
        compile_torch_model(MODEL, X, n_bits=3, inputs_encryption_status=["clear"])
    module = compile_torch_model(MODEL, X, n_bits=3, inputs_encryption_status=["encrypted"])
    np.testing.assert_array_equal(module.forward(X.numpy(), fhe="simulate"), module.forward(X.numpy()))


@pytest.mark.parametrize("bits, rounding, per_norm", [(3, None, False), (8, 5, True)])
def test_default_keys_are_the_cheaper_grouping(bits, rounding, per_norm):
    """Without a configuration, keys per norm group are kept when predicted much faster; a user's
    configuration is compiled as given (no keys are generated here)."""
    from concrete import fhe as cfhe

    from fheestimators.fhe.compiler import default_configuration

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(100, 4).numpy()
    chosen = compile_torch_model(model, x, n_bits=bits, rounding_threshold_bits=rounding)
    mine = default_configuration()
    per_width = compile_torch_model(model, x, n_bits=bits, rounding_threshold_bits=rounding, configuration=mine)
    assert per_width._compile_inputs[1] is mine
    assert mine.multi_parameter_strategy == cfhe.MultiParameterStrategy.PRECISION
    kept = chosen._compile_inputs[1]
    assert (kept is not None and kept.multi_parameter_strategy == cfhe.MultiParameterStrategy.PRECISION_AND_NORM2) \
        == per_norm
    seconds, baseline = chosen.cost().seconds_per_sample, per_width.cost().seconds_per_sample
    assert seconds <= 0.8 * baseline if per_norm else seconds == baseline


@pytest.mark.parametrize("budget, p_error, kept", [(0.0, 0.1, 0.1), (100.0, 0.1, 0.025), (100.0, 0.005, 0.005)])
def test_a_lower_p_error_is_kept_only_within_the_cost_budget(monkeypatch, budget, p_error, kept):
    """With approximate rounding, the user's p_error is a cap: each halving is kept while predicted at
    most MORE_PRECISE_MAX_SECONDS times the user's seconds per sample (0: never; 100: both tries);
    below MORE_PRECISE_MIN_P_ERROR nothing is tried."""
    from fheestimators.torch import compile as door

    monkeypatch.setattr(door, "MORE_PRECISE_MAX_SECONDS", budget)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(100, 2).numpy()
    module = compile_torch_model(model, x, n_bits=4, rounding_threshold_bits=3, p_error=p_error)
    assert any(step.lsbs_to_remove for step in module.program.table_lookups)
    assert module._compile_inputs[2]["p_error"] == kept
    assert module.fhe_circuit.p_error <= kept + 1e-12
    # the circuit kept is the one simulated: at the cap the restored one, not the last tried
    assert module.forward(x[:5], fhe="simulate").shape == (5, 2)
