"""Small convolutional networks: conv, ReLU, average pooling, flatten, linear."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fheestimators.torch.compile import build_quantized_module, compile_torch_model

TOLERANCE_8_BITS = 0.05

# conv: 1x8x8 -> 2x6x6, pool: -> 2x3x3
N_CONV_OUT = 2 * 6 * 6
N_POOL_OUT = 2 * 3 * 3


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(N_POOL_OUT, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(torch.relu(self.conv(x)))))


def torch_output(model, *x) -> np.ndarray:
    with torch.no_grad():
        return model(*x).numpy().astype(np.float64)


@pytest.fixture(scope="module")
def tiny_cnn():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    inputset = torch.randn(50, 1, 8, 8)
    # 3-bit activations with 2-bit weights keep accumulators at 5-6 bits: key generation and
    # one encrypted sample (90 bootstraps) take a few seconds (8-bit keys would take minutes)
    module = compile_torch_model(model, inputset, n_bits={"op_inputs": 3, "op_weights": 2})
    return model, module


def test_tiny_cnn_shape_of_the_program(tiny_cnn):
    _, module = tiny_cnn
    # one ReLU lookup per conv output, one requantization per pooled element that fc reads
    # (2-bit weights round some of fc's inputs to all-zero weights: those cost nothing)
    fc = module.program.steps[-1]
    assert type(fc).__name__ == "MatMul"
    n_read = fc.weight.shape[0]
    assert N_POOL_OUT // 2 < n_read <= N_POOL_OUT
    lookups = [r.table_lookups for r in module.layer_reports()]
    assert sorted(lookups) == sorted([N_CONV_OUT, n_read]), module.report()
    assert module.fhe_circuit.programmable_bootstrap_count == N_CONV_OUT + n_read
    assert all(report.lookup_bits <= 6 for report in module.layer_reports()), module.report()
    # the output layer's accumulator, over every input the module accepts: 7 bits (5 on the inputset)
    assert module.max_bit_width <= 7, module.report()
    assert module.fhe_circuit.graph.maximum_integer_bit_width() <= 7


def test_tiny_cnn_simulate_equals_disable(tiny_cnn):
    model, module = tiny_cnn
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    clear = module.forward(x.numpy(), fhe="disable")
    assert clear.shape == (10, 2)
    np.testing.assert_array_equal(module.forward(x.numpy(), fhe="simulate"), clear)
    # torch tensors are accepted as well
    np.testing.assert_array_equal(module.forward(x, fhe="disable"), clear)


def test_tiny_cnn_execute_one_sample(tiny_cnn):
    _, module = tiny_cnn
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(4)).numpy()
    np.testing.assert_array_equal(module.forward(x, fhe="execute"), module.forward(x, fhe="disable"))


class ConvNet(nn.Module):
    def __init__(self, conv: nn.Conv2d, pool: nn.Module, n_flat: int, flatten=None):
        super().__init__()
        self.conv = conv
        self.pool = pool
        self.fc = nn.Linear(n_flat, 3)
        self.flatten = flatten or (lambda y: torch.flatten(y, 1))

    def forward(self, x):
        return self.fc(self.flatten(self.pool(torch.relu(self.conv(x)))))


CONV_CASES = {
    # 2x8x8 --conv(pad 1, stride 2, groups 2)--> 4x4x4 --pool 2--> 4x2x2
    "padding1-stride2-groups2": lambda: ConvNet(nn.Conv2d(2, 4, 3, padding=1, stride=2, groups=2),
                                                nn.AvgPool2d(2), 16),
    # 2x8x8 --conv 3--> 4x6x6 --pool 3, stride 2, pad 1--> 4x3x3
    "pool-padding-exclude-pad": lambda: ConvNet(nn.Conv2d(2, 4, 3), nn.AvgPool2d(3, stride=2, padding=1), 36),
    "pool-padding-include-pad": lambda: ConvNet(
        nn.Conv2d(2, 4, 3), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True), 36),
    "dilation2-no-bias": lambda: ConvNet(nn.Conv2d(2, 3, 3, dilation=2, bias=False), nn.Identity(), 48),
    "global-average-pool": lambda: ConvNet(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1), 4),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_variants_close_to_torch_at_8_bits(case):
    torch.manual_seed(0)
    model = CONV_CASES[case]().eval()
    x = torch.randn(100, 2, 8, 8)
    module = build_quantized_module(model, x, n_bits=8)
    expected = torch_output(model, x)
    got = module.forward(x.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE_8_BITS * np.ptp(expected), module.report()


def test_view_with_batch_size_flatten():
    torch.manual_seed(0)
    model = ConvNet(nn.Conv2d(2, 4, 3, padding=1, stride=2, groups=2), nn.AvgPool2d(2), 16,
                    flatten=lambda y: y.view(y.size(0), -1)).eval()
    x = torch.randn(100, 2, 8, 8)
    module = build_quantized_module(model, x, n_bits=8)
    expected = torch_output(model, x)
    assert np.abs(module.forward(x.numpy()) - expected).max() <= TOLERANCE_8_BITS * np.ptp(expected)
