"""Learned input bins: edges where the labels change, a tabulated network, the same answer in every mode."""
from __future__ import annotations

import numpy as np
import pytest

from fheestimators import NeuralNetClassifier, NeuralNetRegressor, make_checkerboard
from fheestimators.sklearn.binning import fit_binning, learn_edges

FAST = dict(max_epochs=30, module__n_hidden=8, random_state=0)


@pytest.fixture(scope="module")
def board():
    X, y = make_checkerboard(n_side=60, random_state=0, split=False)
    return X, y


def test_edges_land_on_the_board_s_squares(board):
    # the labels change at 1/6, 1/2 and 5/6 on each axis; an XOR shows nothing on one axis alone
    X, y = board
    edges = learn_edges(X, y, n_bins=4, n_classes=2)
    for feature_edges in edges:
        np.testing.assert_allclose(feature_edges, [1 / 6, 1 / 2, 5 / 6], atol=0.03)


def test_edges_for_a_regression_target_split_where_it_jumps():
    X = np.linspace(0, 1, 400).reshape(-1, 1)
    y = np.where(X[:, 0] > 0.3, 5.0, 0.0) + np.where(X[:, 0] > 0.8, 3.0, 0.0)
    (edges,) = learn_edges(X, y, n_bins=3)
    np.testing.assert_allclose(edges, [0.3, 0.8], atol=0.01)


def test_the_binning_is_an_ordinal_kbins_discretizer(board):
    X, y = board
    binning = fit_binning(X, y, n_bins=8, n_classes=2)
    bins = binning.transform(X)
    assert bins.min() == 0 and bins.max() == 7
    assert np.array_equal(bins, np.floor(bins))


@pytest.fixture(scope="module")
def binned(board):
    X, y = board
    return NeuralNetClassifier(**FAST, module__n_input_bits=3, p_error=1e-9).fit(X, y)


def test_few_features_are_binned_and_the_network_tabulated(binned, board):
    X, y = board
    assert binned.input_binning_ is not None
    assert list(binned.input_binning_.n_bins_) == [4, 4]  # 3 input bits hold 4 bin indices
    cost = binned.fhe_cost_
    assert cost.programmable_bootstraps == 2  # one lookup per class
    assert cost.lookup_bit_widths == ((4, 2),)  # 4 x 4 combinations
    assert cost.max_bit_width == 6  # the logits' tables narrowed to 64 levels
    assert binned.score(X, y) > 0.75  # an XOR of 4 x 4 squares, half learnt in 30 epochs


def test_the_three_modes_agree_on_binned_rows(binned):
    rng = np.random.default_rng(0)
    rows = rng.uniform(-0.5, 1.5, size=(200, 2)).astype(np.float32)  # beyond the data too
    clear = binned.predict_proba(rows)
    np.testing.assert_array_equal(binned.predict_proba(rows, fhe="simulate"), clear)
    np.testing.assert_allclose(binned.predict_proba(rows[:3], fhe="execute"), clear[:3], rtol=1e-6)


def test_the_default_bins_more_finely_with_a_looser_p_error(board):
    X, y = board
    brief = dict(FAST, max_epochs=1)  # the bins and the error probability are set before training
    model = NeuralNetClassifier(**brief).fit(X, y)
    assert list(model.input_binning_.n_bins_) == [8, 8]
    assert model.quantized_module_.fhe_circuit.configuration.p_error == pytest.approx(0.01)
    assert NeuralNetClassifier(**brief, p_error=0.2).fit(X, y).fhe_circuit.configuration.p_error == 0.2


def test_wider_data_regressors_and_none_are_not_binned(board):
    X, y = board[0][:300], board[1][:300]
    brief = dict(FAST, max_epochs=1)
    assert NeuralNetClassifier(**brief).fit(np.c_[X, X[:, :1] ** 2], y).input_binning_ is None
    assert NeuralNetClassifier(**brief, input_bins=None).fit(X, y).input_binning_ is None
    assert NeuralNetRegressor(**brief).fit(X, y.astype(np.float32)).input_binning_ is None
    regressor = NeuralNetRegressor(**brief, input_bins=4).fit(X, y.astype(np.float32))
    assert list(regressor.input_binning_.n_bins_) == [4, 4]


@pytest.mark.parametrize("bad", ["many", 1, 2.5, True])
def test_a_bad_input_bins_is_refused(bad, board):
    X, y = board
    with pytest.raises(ValueError, match="input_bins must be"):
        NeuralNetClassifier(**FAST, input_bins=bad).fit(X, y)
