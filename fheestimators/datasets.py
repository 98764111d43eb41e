"""The specification's benchmark data: a noisy 2-D checkerboard."""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.model_selection import train_test_split


def make_checkerboard(
    n_side: int = 100,
    n_clusters: int = 3,
    noise: float = 0.01,
    test_size: int = 500,
    random_state: Optional[int] = 42,
    split: bool = True,
):
    """Points of an ``n_side`` x ``n_side`` grid in [0, 1]^2, labelled by an XOR checkerboard.

    The label of a point is the XOR of the parities of its rounded coordinates times
    ``n_clusters``; Gaussian noise of standard deviation ``noise`` is added to the points.

    Parameters
    ----------
    n_side : int
        Points per side of the grid (100 gives 10,000 points).
    n_clusters : int
        Squares per unit of the board's side.
    noise : float
        Standard deviation of the noise added to the coordinates.
    test_size : int
        Points held out for testing (the specification's 9,500/500 split).
    random_state : int or None
        Seed for the noise and the split.
    split : bool
        Return ``X_train, X_test, y_train, y_test`` (default) or the whole ``X, y``.

    Returns
    -------
    tuple of numpy.ndarray
        ``X`` in float32 with shape (n, 2), ``y`` in int64.
    """
    rng = np.random.default_rng(random_state)
    xx, yy = np.meshgrid(np.linspace(0, 1, n_side), np.linspace(0, 1, n_side))
    y = (np.rint(xx * n_clusters).astype(np.int64) % 2) ^ (np.rint(yy * n_clusters).astype(np.int64) % 2)
    X = np.c_[xx.ravel(), yy.ravel()] + rng.normal(scale=noise, size=(n_side * n_side, 2))
    X, y = X.astype(np.float32), y.ravel()
    if not split:
        return X, y
    return train_test_split(X, y, test_size=test_size, random_state=random_state, stratify=y)


def fresh_board_points(n_draws: int = 5, first_seed: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``n_draws`` new noisy copies of the whole board (10,000 points each), unseen in training.

    500 test points measure an accuracy to about one point (one point is five samples);
    50,000 fresh points measure the accuracy on the data's distribution to a tenth.
    The default seeds differ from ``make_checkerboard``'s default split (42).
    """
    draws = [make_checkerboard(random_state=first_seed + i, split=False) for i in range(n_draws)]
    return np.concatenate([X for X, _ in draws]), np.concatenate([y for _, y in draws])


def board_rule_accuracy(X: np.ndarray, y: np.ndarray, n_clusters: int = 3) -> float:
    """Accuracy of the board's exact rule on noisy points: the ceiling for any model (Bayes rate).

    The noise moves points across the squares' edges while their labels stay, so even
    the rule that made the labels misclassifies a few percent of them.
    """
    cells = np.rint(np.asarray(X, dtype=np.float64) * n_clusters).astype(np.int64) % 2
    return float(((cells[:, 0] ^ cells[:, 1]) == np.asarray(y)).mean())
