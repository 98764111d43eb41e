"""Our batched simulation equals concrete-python's own per-sample simulation."""
import numpy as np
import pytest
import torch

from fheestimators.torch.compile import compile_torch_model


# Approximate rounding is left out: concrete-python simulates its error as random (values
# next to a rounding edge land on either side), so no deterministic simulation can equal it.
@pytest.mark.parametrize("rounding", [None, {"n_bits": 4, "method": "exact"}])
def test_batched_simulation_equals_concrete_simulation(rounding):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(300, 3).numpy()
    module = compile_torch_model(model, x, n_bits=4, rounding_threshold_bits=rounding)
    q = module.quantize_input(x[:40])
    ours = module.quantized_forward(q, fhe="simulate")
    theirs = np.concatenate([module.fhe_circuit.simulate(q[i : i + 1]) for i in range(len(q))])
    np.testing.assert_array_equal(ours, theirs)
