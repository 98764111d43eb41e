"""Inputs beyond the calibration range run in every mode, clipped the same way in each."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fheestimators import NeuralNetClassifier, compile_torch_model

# far below, far above, and beyond on one feature only; the last row is in range
# exact rounding where a network is not tabulated: approximate rounding's mistakes near a bin's middle are random in FHE
ROUNDING = {"n_bits": 4, "method": "exact"}
EDGES = np.array([[-5.0, 5.0], [1e6, -1e6], [2.0, 0.5], [-1e6, -1e6], [1e6, 1e6], [0.3, 0.7]])


def _train_data():
    rng = np.random.default_rng(0)
    X = rng.random((300, 2)).astype(np.float32)
    return X, (X[:, 0] > X[:, 1]).astype(np.int64)


@pytest.fixture(scope="module")
def torch_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    X, _ = _train_data()
    # 2 bits: the network is tabulated into a 4-bit lookup, whose keys take 3 s to generate (6 bits: 15 s)
    return compile_torch_model(model, X, n_bits=2, rounding_threshold_bits=ROUNDING, p_error=1e-9), X


def test_quantized_inputs_are_clipped_to_the_compiled_integer_type(torch_module):
    module, X = torch_module
    q_train = module.program.input_quantizers[0].quantize(X)
    low, high = module.input_ranges[0]
    # the smallest integer type holding the inputset's values: what concrete-python encrypts
    assert q_train.min() >= 0
    assert (low, high) == (0, 2 ** int(q_train.max()).bit_length() - 1)
    # in-range rows are untouched, out-of-range ones land on the range's edge
    np.testing.assert_array_equal(module.quantize_input(X), q_train)
    q = module.quantize_input(EDGES)
    assert q.min() >= low and q.max() <= high
    assert q[3].tolist() == [max(low, module.program.input_quantizers[0].q_min)] * 2
    # integers given directly are clipped too, so they cannot break encryption
    np.testing.assert_array_equal(module.quantized_forward(np.array([[-999, 999]]), fhe="execute"),
                                  module.quantized_forward(np.array([[low, high]])))


def test_torch_module_runs_edge_inputs_in_all_modes(torch_module):
    module, _ = torch_module
    clear = module.forward(EDGES, fhe="disable")
    np.testing.assert_array_equal(module.forward(EDGES, fhe="simulate"), clear)
    np.testing.assert_array_equal(module.forward(EDGES, fhe="execute"), clear)


def test_estimator_runs_edge_inputs_in_all_modes():
    X, y = _train_data()
    # 3 input bits: 4 bins per feature, a 4-bit table (keys of 0.1 GB, not the 8 bins' 0.5 GB)
    clf = NeuralNetClassifier(max_epochs=3, module__n_hidden=4, module__n_w_bits=3, module__n_a_bits=3,
                              module__n_input_bits=3, rounding_threshold_bits=ROUNDING, p_error=1e-9,
                              random_state=0).fit(X, y)
    clear = clf.predict_proba(EDGES, fhe="disable")
    np.testing.assert_allclose(clf.predict_proba(EDGES, fhe="simulate"), clear)
    np.testing.assert_allclose(clf.predict_proba(EDGES, fhe="execute"), clear)


@pytest.mark.parametrize("fhe", ["disable", "simulate", "execute"])
def test_an_empty_batch_gives_empty_outputs(torch_module, fhe):
    module, _ = torch_module
    assert module.forward(np.zeros((0, 2)), fhe=fhe).shape == (0, 2)
