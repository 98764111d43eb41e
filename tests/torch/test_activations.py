"""Every torch activation between two linear layers: float graph, 8-bit accuracy, one lookup per element.

The model is always ``Linear(3, 4) -> activation -> Linear(4, 2)``: whatever sits between the
two linear layers (bias, activation, requantization) must fold into a single table lookup
per hidden element, so the report must show exactly 4 lookups.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from fheestimators.onnx.export import torch_to_onnx
from fheestimators.onnx.graph import Graph
from fheestimators.torch.compile import build_quantized_module, compile_torch_model

N_HIDDEN = 4
# max |quantized - torch| at 8 bits, as a share of the torch output range
TOLERANCE_8_BITS = 0.05


class Functional(nn.Module):
    """Wrap a function of one tensor as a module."""

    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, x):
        return self.func(x)


# name -> (factory, discontinuity points of the activation or None, bug reason or None)
ACTIVATIONS = {
    "CELU": (nn.CELU, None, None),
    "ELU": (nn.ELU, None, None),
    "GELU": (nn.GELU, None, None),
    "Hardshrink": (nn.Hardshrink, (-0.5, 0.5), None),
    "Hardsigmoid": (nn.Hardsigmoid, None, None),
    "Hardswish": (nn.Hardswish, None, None),
    "Hardtanh": (nn.Hardtanh, None, None),
    "LeakyReLU": (nn.LeakyReLU, None, None),
    "LogSigmoid": (nn.LogSigmoid, None, None),
    "Mish": (nn.Mish, None, None),
    "PReLU": (nn.PReLU, None, None),
    "ReLU6": (nn.ReLU6, None, None),
    "ReLU": (nn.ReLU, None, None),
    "SELU": (nn.SELU, None, None),
    "Sigmoid": (nn.Sigmoid, None, None),
    "SiLU": (nn.SiLU, None, None),
    "Softplus": (nn.Softplus, None, None),
    "Softshrink": (nn.Softshrink, None, None),
    "Softsign": (nn.Softsign, None, None),
    "Tanh": (nn.Tanh, None, None),
    "Tanhshrink": (nn.Tanhshrink, None, None),
    "Threshold": (lambda: nn.Threshold(0.1, 20.0), (0.1,), None),
    # functional forms
    "F.gelu": (lambda: Functional(torch.nn.functional.gelu), None, None),
    "torch.sigmoid": (lambda: Functional(torch.sigmoid), None, None),
    "torch.clamp": (lambda: Functional(lambda x: torch.clamp(x, -0.5, 1.0)), None, None),
    "torch.abs": (lambda: Functional(torch.abs), None, None),
    "torch.exp": (lambda: Functional(torch.exp), None, None),
    "torch.log(abs+1)": (lambda: Functional(lambda x: torch.log(x.abs() + 1)), None, None),
    "x*2": (lambda: Functional(lambda x: x * 2), None, None),
    "x/3": (lambda: Functional(lambda x: x / 3), None, None),
    "torch.gt": (lambda: Functional(lambda x: torch.gt(x, 0.1).float()), (0.1,), None),
    "torch.clip": (lambda: Functional(lambda x: torch.clip(x, min=0.0, max=2.0)), None, None),
}
assert len(ACTIVATIONS) == 22 + 10


def _params(with_bugs: bool):
    params = []
    for name, (_, _, bug) in ACTIVATIONS.items():
        marks = [pytest.mark.xfail(reason=bug, raises=ValueError, strict=True)] if (with_bugs and bug) else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def _inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(200, 3, generator=generator) * 2


def make_model(name: str) -> nn.Module:
    torch.manual_seed(1)
    factory = ACTIVATIONS[name][0]
    return nn.Sequential(nn.Linear(3, N_HIDDEN), factory(), nn.Linear(N_HIDDEN, 2)).eval()


@functools.lru_cache(maxsize=None)
def exported(name: str):
    model = make_model(name)
    return model, torch_to_onnx(model, [_inputs()[:2]])


@functools.lru_cache(maxsize=None)
def quantized(name: str, n_bits: int = 8):
    model = make_model(name)
    return model, build_quantized_module(model, _inputs(), n_bits=n_bits)


def torch_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy().astype(np.float64)


@pytest.mark.parametrize("name", _params(with_bugs=False))
def test_float_onnx_graph_matches_torch(name):
    model, onnx_model = exported(name)
    x = _inputs()
    (graph_out,) = Graph.from_onnx(onnx_model).run(x.numpy())
    np.testing.assert_allclose(graph_out, torch_output(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", _params(with_bugs=True))
def test_quantized_8_bits_close_to_torch(name):
    model, module = quantized(name)
    x = _inputs()
    expected = torch_output(model, x)
    got = module.forward(x.numpy())
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    error = np.abs(got - expected).max(axis=1) / np.ptp(expected)

    discontinuities = ACTIVATIONS[name][1]
    if discontinuities is not None:
        # A quantization step can push a pre-activation across a jump: only judge the samples
        # whose hidden pre-activations are all a few steps away from every jump.
        with torch.no_grad():
            hidden = model[0](x).numpy()
        margin = 0.005 * np.ptp(hidden)  # about one 8-bit step of the hidden range
        distance = np.min([np.abs(hidden - point) for point in discontinuities], axis=0).min(axis=1)
        far = distance > margin
        assert far.mean() > 0.5, "the test inputs should mostly stay away from the jumps"
        error = error[far]
    assert error.max() <= TOLERANCE_8_BITS, f"{name}: max error {error.max():.3f} of the output range"


@pytest.mark.parametrize("name", _params(with_bugs=True))
def test_one_lookup_per_hidden_element(name):
    _, module = quantized(name)
    reports = module.layer_reports()
    assert sum(r.table_lookups for r in reports) == N_HIDDEN, module.report()
    assert len(module.program.table_lookups) == 1


SUBSET = ["ReLU", "Sigmoid", "SiLU", "Tanhshrink"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, id=name,
                     marks=[pytest.mark.xfail(reason=ACTIVATIONS[name][2], raises=ValueError, strict=True)]
                     if ACTIVATIONS[name][2] else [])
        for name in SUBSET
    ],
)
def test_compiled_simulation_matches_clear(name):
    model = make_model(name)
    x = _inputs()
    module = compile_torch_model(model, x, n_bits=4)
    assert module.fhe_circuit is not None
    assert module.fhe_circuit.programmable_bootstrap_count == N_HIDDEN
    sample = x[:20].numpy()
    clear = module.forward(sample, fhe="disable")
    simulated = module.forward(sample, fhe="simulate")
    np.testing.assert_array_equal(simulated, clear)
    # 4 bits still follow the float model roughly
    expected = torch_output(model, x[:20])
    assert np.abs(clear - expected).max() <= 0.35 * np.ptp(expected)
