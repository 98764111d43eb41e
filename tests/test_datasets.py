"""The checkerboard data, its fresh draws and its exact rule (the Bayes ceiling)."""
import numpy as np
import pytest

from fheestimators.datasets import board_rule_accuracy, fresh_board_points, make_checkerboard


def test_the_exact_rule_labels_noiseless_points_perfectly_and_noisy_ones_up_to_the_noise():
    X, y = make_checkerboard(noise=0.0, split=False)
    assert board_rule_accuracy(X, y) == 1.0
    X, y = make_checkerboard(split=False)
    # noise of 1% of the side moves a few percent of the points across an edge
    assert 0.93 < board_rule_accuracy(X, y) < 0.98
    flipped = 1 - y
    assert board_rule_accuracy(X, flipped) == pytest.approx(1.0 - board_rule_accuracy(X, y))


def test_fresh_points_are_new_noise_on_the_same_board():
    X, y = fresh_board_points(n_draws=2)
    assert X.shape == (20_000, 2) and y.shape == (20_000,)
    X_default, y_default = make_checkerboard(split=False)
    np.testing.assert_array_equal(y[:10_000], y_default)  # the labels are the board's
    assert not np.allclose(X[:10_000], X_default)  # the positions are new
    assert not np.allclose(X[:10_000], X[10_000:])
