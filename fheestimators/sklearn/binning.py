"""Learned input bins: on data of few features, the network reads each feature's bin, not its value.

A client quantizes its rows in the clear, so any per-feature monotone map costs nothing
in FHE. Mapping each feature to one of a few bins, placed where the labels change,
leaves the network so few input combinations (8 x 8 for two features) that compilation
tabulates it: one small table lookup per output instead of one per neuron. The bins
are a fitted ``KBinsDiscretizer`` (ordinal), so that deployment ships them to the
client as it ships any scikit-learn preprocessing.

Edges are placed by coordinate ascent from quantiles: each edge in turn moves to the
candidate (a fine quantile of its feature, between its neighbours) where the grid of
bins predicts the training targets best, by the majority class of each cell or the
mean of each cell. Moving one edge at a time sees interactions (an XOR of two features
has no edge worth placing on one feature alone, but its quantile start has them all).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from sklearn.preprocessing import KBinsDiscretizer

# finer quantiles are candidates for each edge; more cost time and fit noise
N_CANDIDATES = 64
MAX_SWEEPS = 4


def _cells(bins: np.ndarray, n_bins: list[int]) -> np.ndarray:
    """One cell index per row, from each feature's bin index."""
    index = np.zeros(len(bins), dtype=np.int64)
    for j, n in enumerate(n_bins):
        index = index * n + bins[:, j]
    return index


def _fit_quality(cells: np.ndarray, n_cells: int, y: np.ndarray, n_classes: Optional[int]) -> float:
    """How well one value per cell predicts ``y``: correct majority votes, or minus the squared error."""
    if n_classes is not None:
        counts = np.bincount(cells * n_classes + y, minlength=n_cells * n_classes).reshape(n_cells, n_classes)
        return float(counts.max(axis=1).sum())
    count = np.bincount(cells, minlength=n_cells)
    filled = count > 0
    # the squared error of cell means is sum(y^2) - sum(total^2 / count): maximize the second term
    return float(sum(np.sum(np.bincount(cells, weights=column, minlength=n_cells)[filled] ** 2 / count[filled])
                     for column in y.reshape(len(y), -1).T))


def learn_edges(X: np.ndarray, y: np.ndarray, n_bins: int, n_classes: Optional[int] = None) -> list[np.ndarray]:
    """Per feature, the inner edges of at most ``n_bins`` bins placed where ``y`` changes.

    ``y`` holds class indices (``n_classes`` given) or numbers (one column or more).
    """
    X = np.asarray(X, dtype=np.float64)
    levels = np.linspace(0, 1, n_bins + 1)[1:-1]
    fine = np.linspace(0, 1, N_CANDIDATES + 1)[1:-1]
    edges = [np.unique(np.quantile(X[:, j], levels)) for j in range(X.shape[1])]
    candidates = [np.unique(np.quantile(X[:, j], fine)) for j in range(X.shape[1])]
    bins = np.stack([np.searchsorted(e, X[:, j], side="right") for j, e in enumerate(edges)], axis=1)
    sizes = [len(e) + 1 for e in edges]
    n_cells = int(np.prod(sizes))
    best = _fit_quality(_cells(bins, sizes), n_cells, y, n_classes)
    for _ in range(MAX_SWEEPS):
        moved = False
        for j, feature_edges in enumerate(edges):
            for k in range(len(feature_edges)):
                low = feature_edges[k - 1] if k > 0 else -np.inf
                high = feature_edges[k + 1] if k + 1 < len(feature_edges) else np.inf
                for candidate in candidates[j][(candidates[j] > low) & (candidates[j] < high)]:
                    trial = feature_edges.copy()
                    trial[k] = candidate
                    bins[:, j] = np.searchsorted(trial, X[:, j], side="right")
                    quality = _fit_quality(_cells(bins, sizes), n_cells, y, n_classes)
                    if quality > best:
                        best, feature_edges, moved = quality, trial, True
                edges[j] = feature_edges
                bins[:, j] = np.searchsorted(feature_edges, X[:, j], side="right")
        if not moved:
            break
    return edges


def fit_binning(X: np.ndarray, y: np.ndarray, n_bins: int, n_classes: Optional[int] = None) -> KBinsDiscretizer:
    """A fitted ordinal ``KBinsDiscretizer`` with the learned edges: bin ``i`` of a feature is ``i``."""
    edges = learn_edges(X, y, n_bins, n_classes)
    binning = KBinsDiscretizer(n_bins=n_bins, encode="ordinal", strategy="uniform", subsample=None)
    binning.fit(X)
    outer = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
    binning.bin_edges_ = np.array([np.r_[low, inner, high] for (low, high), inner in zip(outer, edges)], dtype=object)
    binning.n_bins_ = np.array([len(inner) + 1 for inner in edges])
    return binning
