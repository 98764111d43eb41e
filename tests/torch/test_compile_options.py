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


def test_lookups_get_keys_per_norm_unless_the_user_configures():
    """compile_torch_model's default groups lookups by norm too; a user's configuration is kept as given."""
    from concrete import fhe as cfhe

    from fheestimators.fhe.compiler import default_configuration

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(50, 2).numpy()
    module = compile_torch_model(model, x, n_bits=3)
    assert module._compile_inputs[1].multi_parameter_strategy == cfhe.MultiParameterStrategy.PRECISION_AND_NORM2
    mine = default_configuration()
    module = compile_torch_model(model, x, n_bits=3, configuration=mine)
    assert module._compile_inputs[1] is mine
    assert mine.multi_parameter_strategy == cfhe.MultiParameterStrategy.PRECISION
