"""Shape ops, encrypted additions, constant matmuls, several inputs and ONNX models."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fheestimators.quantization.steps import TableLookup
from fheestimators.torch.compile import build_quantized_module, compile_onnx_model, compile_torch_model

TOLERANCE_8_BITS = 0.05


def torch_output(model, *x) -> np.ndarray:
    with torch.no_grad():
        return model(*x).numpy().astype(np.float64)


def assert_close_to_torch(module, model, *x, tolerance=TOLERANCE_8_BITS):
    expected = torch_output(model, *x)
    got = module.forward(*[t.numpy() for t in x])
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    error = np.abs(got - expected).max()
    assert error <= tolerance * np.ptp(expected), f"error {error:.4g}, range {np.ptp(expected):.4g}\n{module.report()}"


def n_lookups(module) -> int:
    return sum(r.table_lookups for r in module.layer_reports())


class ShapeOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.fc1(x))                 # (n, 8)
        y = y.reshape(-1, 2, 4).transpose(1, 2)     # (n, 4, 2)
        y = y.view(-1, 2, 2, 2)                     # (n, 2, 2, 2)
        y = torch.flatten(y, 1)                     # (n, 8), permuted
        return self.fc2(y)


class ShapeOpsOnInput(nn.Module):
    """Shape ops on the (quantized) input itself, before any linear layer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(x.reshape(-1, 3, 2).transpose(1, 2).flatten(1))


class EncryptedAddSub(nn.Module):
    def __init__(self, subtract=False):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(4, 5)
        self.fc3 = nn.Linear(5, 2)
        self.subtract = subtract

    def forward(self, x):
        y = self.fc1(x) - self.fc2(x) if self.subtract else self.fc1(x) + self.fc2(x)
        return self.fc3(torch.relu(y))


class ConstantMatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 3))
        self.w2 = nn.Parameter(torch.randn(3, 2))

    def forward(self, x):
        return torch.relu(x @ self.w1) @ self.w2


class LeftMatMul(nn.Module):
    """A constant on the left: ``W @ x`` over the last two axes."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.w @ x.reshape(-1, 3, 4))  # (n, 2, 4)
        return self.fc(y.flatten(1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(2, 4)
        self.fc3 = nn.Linear(4, 2)

    def forward(self, x1, x2):
        return self.fc3(torch.relu(self.fc1(x1) + self.fc2(x2)))


class ConcatInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(2, 4)
        self.fc3 = nn.Linear(8, 2)

    def forward(self, x1, x2):
        return self.fc3(torch.cat([torch.relu(self.fc1(x1)), torch.sigmoid(self.fc2(x2))], dim=1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc1(x)
        return self.fc3(torch.relu(self.fc2(torch.relu(y)) + y))


class ConcatSameSource(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        y = self.fc1(x)
        return self.fc2(torch.cat([torch.relu(y), torch.sigmoid(y)], dim=1))


class ReduceMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 6)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)).reshape(-1, 3, 2).mean(dim=2))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def batchnorm_dropout() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.3), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    return model


SINGLE_INPUT = {
    "shape-ops": (ShapeOps, (6,)),
    "shape-ops-on-input": (ShapeOpsOnInput, (6,)),
    "encrypted-add": (EncryptedAddSub, (4,)),
    "encrypted-sub": (lambda: EncryptedAddSub(subtract=True), (4,)),
    "constant-matmul": (ConstantMatMul, (4,)),
    "constant-left-matmul": (LeftMatMul, (12,)),
    "residual": (Residual, (3,)),
    "concat-same-source": (ConcatSameSource, (3,)),
    "reduce-mean": (ReduceMean, (3,)),
    "conv1d": (Conv1dNet, (2, 8)),
    "batchnorm-dropout": (batchnorm_dropout, (3,)),
}


@pytest.mark.parametrize("case", list(SINGLE_INPUT))
def test_single_input_models_close_to_torch_at_8_bits(case):
    factory, shape = SINGLE_INPUT[case]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(200, *shape)
    module = build_quantized_module(model, x, n_bits=8)
    assert_close_to_torch(module, model, x)


def test_shape_ops_cost_no_lookup():
    torch.manual_seed(0)
    model = ShapeOps().eval()
    module = build_quantized_module(model, torch.randn(100, 6), n_bits=8)
    # only the 8 ReLUs: reshape, transpose, view and flatten only move elements
    assert n_lookups(module) == 8, module.report()


def test_batchnorm_and_dropout_fold_into_the_lookup():
    torch.manual_seed(0)
    module = build_quantized_module(batchnorm_dropout().eval(), torch.randn(100, 3), n_bits=8)
    assert n_lookups(module) == 4, module.report()


def test_encrypted_add_lookups():
    torch.manual_seed(0)
    module = build_quantized_module(EncryptedAddSub().eval(), torch.randn(100, 4), n_bits=8)
    # two accumulators: one kept exact, the other looked up on its scale (5), then the ReLU on the sum (5)
    assert n_lookups(module) == 10, module.report()
    assert any(step.__class__.__name__ == "AddSub" for step in module.program.steps)


@pytest.mark.parametrize("model_class", [TwoInputs, ConcatInputs])
def test_two_inputs_close_to_torch_at_8_bits(model_class):
    torch.manual_seed(0)
    model = model_class().eval()
    x1, x2 = torch.randn(200, 3), torch.randn(200, 2)
    module = build_quantized_module(model, (x1, x2), n_bits=8)
    assert module.n_inputs == 2
    assert_close_to_torch(module, model, x1, x2)
    q1, q2 = module.quantize_input(x1.numpy(), x2.numpy())
    np.testing.assert_array_equal(module.forward_and_dequant(q1, q2), module.forward(x1.numpy(), x2.numpy()))
    with pytest.raises(ValueError, match="2 input"):
        module.forward(x1.numpy())


def test_two_inputs_compiled_simulate_equals_disable():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    module = compile_torch_model(model, (torch.randn(100, 3), torch.randn(100, 2)), n_bits=4)
    x1, x2 = torch.randn(20, 3).numpy(), torch.randn(20, 2).numpy()
    clear = module.forward(x1, x2, fhe="disable")
    np.testing.assert_array_equal(module.forward(x1, x2, fhe="simulate"), clear)
    assert_close_to_torch(module, model, torch.tensor(x1), torch.tensor(x2), tolerance=0.35)


def _export(model, dummy) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=14, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def test_compile_onnx_model_from_torch_export():
    torch.manual_seed(0)
    model = EncryptedAddSub().eval()
    x = torch.randn(200, 4)
    onnx_model = _export(model, x[:2])
    module = compile_onnx_model(onnx_model, x.numpy(), n_bits=4)
    sample = x[:20].numpy()
    clear = module.forward(sample, fhe="disable")
    np.testing.assert_array_equal(module.forward(sample, fhe="simulate"), clear)
    assert module.fhe_circuit.programmable_bootstrap_count == n_lookups(module)
    # at 8 bits (not compiled) the ONNX model follows torch as closely as the torch path does
    module_8 = build_quantized_module(onnx_model, x, n_bits=8)
    assert_close_to_torch(module_8, model, x)
    np.testing.assert_allclose(module_8.forward(x.numpy()),
                               build_quantized_module(model, x, n_bits=8).forward(x.numpy()))


def test_outputs_after_last_linear_are_applied_in_the_clear():
    """An activation after the last layer costs no lookup: the client applies it after decryption."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid()).eval()
    x = torch.randn(200, 3)
    module = build_quantized_module(model, x, n_bits=8)
    assert n_lookups(module) == 4
    assert not isinstance(module.program.steps[-1], TableLookup)
    assert_close_to_torch(module, model, x)


class SelfCombination(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.op = op

    def forward(self, x):
        y = self.fc(x)
        return self.op(y)


@pytest.mark.parametrize("op", [lambda y: y + y, lambda y: y * torch.sigmoid(y), lambda y: y - torch.tanh(y)],
                         ids=["y+y", "y*sigmoid(y)", "y-tanh(y)"])
def test_combining_a_tensor_with_itself_at_the_output(op):
    torch.manual_seed(0)
    model = SelfCombination(op).eval()
    x = torch.randn(200, 3)
    module = build_quantized_module(model, x, n_bits=8)
    assert_close_to_torch(module, model, x)
