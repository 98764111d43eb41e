"""The specification's examples: SimpleNet through the older and the newer flow, encrypted.

The hidden size is reduced from 30 to 6 (and n_bits is 3) so that key generation and one
encrypted run take a few seconds; the 30-unit version is compiled and simulated only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fheestimators.quantization.tabulate import tabulation_limit
from fheestimators.torch.compile import compile_torch_model

N_FEAT = 2


class SimpleNet(nn.Module):
    """Simple MLP with torch, as in the specification."""

    def __init__(self, n_hidden=30):
        super().__init__()
        self.fc1 = nn.Linear(in_features=N_FEAT, out_features=n_hidden)
        self.fc2 = nn.Linear(in_features=n_hidden, out_features=n_hidden)
        self.fc3 = nn.Linear(in_features=n_hidden, out_features=2)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = self.fc3(x)
        return x


@pytest.fixture(scope="module", autouse=True)
def untabulated_builds():
    """These tests check one bootstrap per hidden neuron, as the specification counts them;
    on 2 features of 3 bits the networks would otherwise be tabulated (test_tabulate.py)."""
    with tabulation_limit(0):
        yield


@pytest.fixture(scope="module")
def small_simple_net():
    """SimpleNet(6) compiled at 3 bits: shared by both flows so keys are generated once."""
    torch.manual_seed(0)
    torch_model = SimpleNet(n_hidden=6)
    module = compile_torch_model(torch_model, torch.randn(100, N_FEAT), n_bits=3)
    return torch_model, module


def test_small_simple_net_is_tiny(small_simple_net):
    _, module = small_simple_net
    # two hidden layers of 6 ReLUs: 12 bootstraps, accumulators small enough for fast FHE
    assert module.fhe_circuit.programmable_bootstrap_count == 12
    assert module.max_bit_width <= 6
    assert module.fhe_circuit.graph.maximum_integer_bit_width() <= 7


def test_spec_older_flow_encrypt_run_decrypt(small_simple_net):
    _, quantized_module = small_simple_net
    rng = np.random.default_rng(1)
    x_test = np.array([rng.standard_normal(N_FEAT)])
    x_test_quantized = quantized_module.quantize_input(x_test)
    assert np.issubdtype(x_test_quantized.dtype, np.integer)
    assert x_test_quantized.shape == (1, N_FEAT)

    expected = quantized_module.forward_and_dequant(x_test_quantized)
    assert quantized_module.forward_fhe is quantized_module.fhe_circuit
    y_fhe = quantized_module.dequantize_output(
        quantized_module.fhe_circuit.encrypt_run_decrypt(x_test_quantized)
    )
    assert y_fhe.shape == (1, 2)
    np.testing.assert_array_equal(y_fhe, expected)
    np.testing.assert_array_equal(expected, quantized_module.forward(x_test, fhe="disable"))


def test_spec_newer_flow_forward_execute(small_simple_net):
    torch_model, quantized_module = small_simple_net
    rng = np.random.default_rng(2)
    x_test = rng.standard_normal((1, N_FEAT))
    clear = quantized_module.forward(x_test, fhe="disable")
    executed = quantized_module.forward(x_test, fhe="execute")
    np.testing.assert_array_equal(executed, clear)
    # the integer flow as well: quantized_forward in FHE returns the clear integers
    q_x = quantized_module.quantize_input(x_test)
    np.testing.assert_array_equal(
        quantized_module.quantized_forward(q_x, fhe="execute"),
        quantized_module.quantized_forward(q_x, fhe="disable"),
    )
    # 3 bits stay in the neighbourhood of the float model
    with torch.no_grad():
        expected = torch_model(torch.tensor(x_test, dtype=torch.float32)).numpy()
    assert np.abs(clear - expected).max() < 1.0


def test_spec_full_size_simple_net_compiles_and_simulates():
    torch.manual_seed(0)
    torch_model = SimpleNet()  # n_hidden=30, as written in the specification
    inputset = torch.randn(100, N_FEAT)
    quantized_module = compile_torch_model(torch_model, inputset, n_bits=3)
    # one lookup per hidden neuron, but 3-bit weights may round a neuron's weights to zero
    lookups = sum(step.n_elements for step in quantized_module.program.table_lookups)
    assert 55 <= lookups <= 60
    assert quantized_module.fhe_circuit.programmable_bootstrap_count == lookups
    x = torch.randn(10, N_FEAT).numpy()
    np.testing.assert_array_equal(
        quantized_module.forward(x, fhe="simulate"), quantized_module.forward(x, fhe="disable")
    )
    q = quantized_module.quantize_input(x)
    np.testing.assert_array_equal(quantized_module.forward_and_dequant(q), quantized_module.forward(x))


def test_pbs_count_is_one_per_hidden_neuron():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 2))
    module = compile_torch_model(model, torch.randn(50, 2), n_bits=3)
    assert module.fhe_circuit.programmable_bootstrap_count == 5
    assert sum(r.table_lookups for r in module.layer_reports()) == 5
