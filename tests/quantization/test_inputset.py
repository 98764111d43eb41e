"""Compiling on the inputset's bounding rows builds the circuit all its rows build."""
from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from fheestimators.quantization import inputset as selection
from fheestimators.quantization.program import IntegerProgram
from fheestimators.quantization.steps import Shift
from fheestimators.torch.compile import compile_brevitas_qat_model, compile_torch_model


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class SmallQATNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant_inp = qnn.QuantIdentity(bit_width=3, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(3, 12, bias=True, weight_bit_width=3, bias_quant=None)
        self.relu = qnn.QuantReLU(bit_width=3, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(12, 2, bias=True, weight_bit_width=3, bias_quant=None)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.quant_inp(x))))


def _mlp(inputset):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))
    rounding = {"n_bits": 5, "method": "approximate"}
    return compile_torch_model(model, inputset, n_bits=4, rounding_threshold_bits=rounding)


def _cnn(inputset):
    return compile_torch_model(SmallCNN(), inputset, n_bits={"op_inputs": 3, "op_weights": 2})


def _qat(inputset):
    model = SmallQATNet()
    model(inputset)  # calibrate the activation quantizers
    return compile_brevitas_qat_model(model.eval(), inputset, rounding_threshold_bits={"n_bits": 4, "method": "exact"})


CASES = {
    "mlp, approximate rounding": (_mlp, (1000, 4)),
    "cnn": (_cnn, (1000, 1, 8, 8)),
    "brevitas, exact rounding": (_qat, (1000, 3)),
}


@pytest.mark.parametrize("case", CASES)
def test_the_bounding_rows_compile_the_circuit_of_the_whole_inputset(case, monkeypatch):
    build, shape = CASES[case]
    torch.manual_seed(0)
    inputset = torch.randn(*shape) * torch.linspace(0.5, 2.0, shape[-1])  # features of several ranges

    def compiled():
        torch.manual_seed(1)  # the same weights each time
        return build(inputset)

    selected = compiled()
    monkeypatch.setattr(selection, "MIN_ROWS_TO_SELECT", 10**9)  # every row, as concrete-python alone does
    whole = compiled()

    traced_rows = len(selected._compile_inputs[0])
    assert traced_rows < shape[0] / 4, traced_rows
    assert len(whole._compile_inputs[0]) == shape[0]
    # the same bounds on every node, hence the same bit-widths and the same program
    nodes = [(str(node.output), node.bounds) for node in selected.fhe_circuit.graph.graph.nodes]
    assert nodes == [(str(node.output), node.bounds) for node in whole.fhe_circuit.graph.graph.nodes]
    assert selected.fhe_circuit.mlir == whole.fhe_circuit.mlir
    x = inputset[:20].numpy()
    np.testing.assert_array_equal(selected.forward(x, fhe="simulate"), whole.forward(x, fhe="simulate"))


def test_a_small_inputset_is_traced_whole():
    q = (np.arange(selection.MIN_ROWS_TO_SELECT - 1).reshape(-1, 1),)
    program = IntegerProgram(["x"], [], [Shift("shift", ["x"], "y", constant=3)], [])
    assert selection.select_inputset(program, q)[0] is q[0]


@settings(max_examples=50, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=st.integers(-50, 50)))
def test_the_rows_hold_each_elements_extremes(x):
    program = IntegerProgram(["x"], [], [Shift("shift", ["x"], "y", constant=-7)], [])
    rows = selection.bounding_rows(program, (x,))
    assert rows[0] == 0 and list(rows) == sorted(set(rows))
    np.testing.assert_array_equal(x[rows].min(axis=0), x.min(axis=0))
    np.testing.assert_array_equal(x[rows].max(axis=0), x.max(axis=0))
