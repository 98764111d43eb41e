"""The regressor's linear term: a ridge regression on the training rows that the MLP adds to.

On small, mostly linear data (diabetes) a network trained on 80% of the rows, the rest
held out for early stopping, stays below a ridge regression on all of them; started as
that ridge regression, it only has to learn what is left.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from torch import nn

# ridge penalties tried by leave-one-out (RidgeCV's efficient form): from almost none to strong
ALPHAS = np.logspace(-3, 3, 13)
# the output layer's initial weights are scaled by this, so that training starts close to the ridge model
OUTPUT_INIT_SCALE = 0.1


def fit_linear_term(module: nn.Module, X: np.ndarray, y: np.ndarray) -> None:
    """Set ``module.linear_term_layer`` (if it has one) to a ridge regression of ``y`` on ``X``.

    The output layer's bias takes the ridge intercept and its weights shrink by
    ``OUTPUT_INIT_SCALE``: the network starts as the linear model.

    Parameters
    ----------
    module : torch.nn.Module
        A ``QATMLP`` or ``FloatMLP`` built with ``linear_term=True``; others are left as they are.
    X : ndarray of shape (n_samples, n_inputs)
        The rows as the network reads them.
    y : ndarray of shape (n_samples, n_outputs)
        The targets the network learns.
    """
    layer = getattr(module, "linear_term_layer", None)
    if layer is None:
        return
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
    ridge = RidgeCV(alphas=ALPHAS, alpha_per_target=y.shape[1] > 1).fit(X, y)
    output = module.linear_layers[-1]
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(ridge.coef_.reshape(layer.weight.shape), dtype=layer.weight.dtype))
        output.weight.mul_(OUTPUT_INIT_SCALE)
        output.bias.copy_(torch.as_tensor(np.ravel(ridge.intercept_), dtype=output.bias.dtype))
