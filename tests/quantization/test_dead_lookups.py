"""Neurons that pruning cut off cost no bootstrap, and the results do not change."""
import numpy as np
import pytest
import torch

from fheestimators.torch.compile import build_quantized_module, compile_torch_model


def _mlp(seed=0, hidden=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )


def _lookups(module) -> int:
    return sum(step.n_elements for step in module.program.table_lookups)


def test_unread_and_unfed_neurons_are_dropped_without_changing_outputs():
    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    reference = build_quantized_module(_mlp(), x, n_bits=5)
    model = _mlp()
    with torch.no_grad():
        model[4].weight[:, 1] = 0     # hidden-2 neuron 1 is read by no output
        model[2].weight[3, :] = 0     # hidden-2 neuron 3 has no input: a constant
        model[2].weight[:, 5] = 0     # hidden-1 neuron 5 is read by nobody
    pruned = build_quantized_module(model, x, n_bits=5)
    assert _lookups(reference) == 16
    assert _lookups(pruned) == 16 - 3

    # the same network without the pass gives the same integers
    from fheestimators.quantization import dead_lookups

    original = dead_lookups.remove_dead_lookups
    dead_lookups_off = lambda program: 0  # noqa: E731
    import fheestimators.torch.compile as compile_module

    compile_module.remove_dead_lookups = dead_lookups_off
    try:
        unpruned = build_quantized_module(model, x, n_bits=5)
    finally:
        compile_module.remove_dead_lookups = original
    assert _lookups(unpruned) == 16
    np.testing.assert_array_equal(pruned.forward(x), unpruned.forward(x))


def test_dead_neurons_are_skipped_in_fhe_too():
    x = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    model = _mlp(hidden=4)
    with torch.no_grad():
        model[4].weight[:, 0] = 0
        model[2].weight[2, :] = 0
    module = compile_torch_model(model, x, n_bits=3)
    assert module.fhe_circuit.programmable_bootstrap_count == 8 - 2
    np.testing.assert_array_equal(module.forward(x[:2], fhe="execute"), module.forward(x[:2]))
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))
