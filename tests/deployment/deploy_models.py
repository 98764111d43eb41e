"""The small models of the deployment tests: few neurons, exact rounding, negligible p_error,
so that encrypted results equal ``predict`` exactly and a run takes well under a second."""
from __future__ import annotations

import numpy as np

# 2-bit weights and activations, 3-bit inputs: 4-bit accumulators need no rounding, and a
# sample costs 5 bootstraps (keygen about 1.4 s, a run 0.5 s, against 4.4 s and 1.6 s with
# 3-bit settings rounded exactly to 4 bits)
# Unbinned (input_bins=None): the service tests need samples that take a while to run.
# Unscaled: standardized, these [0, 1] features take the accumulators to 7 bits (keys 115 MB, not 24)
SMALL = dict(max_epochs=3, module__n_hidden=4, module__n_input_bits=3, module__n_w_bits=2, module__n_a_bits=2,
             rounding_threshold_bits=None, p_error=1e-9, random_state=0, input_bins=None, scale_inputs=False)


def two_feature_data(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 2)).astype(np.float32)
    return X, np.where(X[:, 0] > X[:, 1], "above", "below")
