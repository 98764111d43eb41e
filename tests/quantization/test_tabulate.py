"""Tabulated programs: one lookup per output on the packed inputs, equal to the program everywhere."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fheestimators.quantization.module import _input_ranges
from fheestimators.quantization.tabulate import (
    MAX_TABULATED_COMBINATIONS, all_inputs, input_domains, tabulate, tabulation_limit,
)
from fheestimators.torch.compile import build_quantized_module, compile_brevitas_qat_model, compile_torch_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _networks import QATPrunedSimpleNet, logits, train  # noqa: E402  (the specification's network)


def _mlp(n_in=2, hidden=6, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


@pytest.mark.parametrize("rounding", [None, {"n_bits": 3, "method": "approximate"}])
def test_tabulated_program_equals_the_program_on_every_input(rounding):
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    with tabulation_limit(0):
        reference = build_quantized_module(_mlp(), x, n_bits=3)
    module = build_quantized_module(_mlp(), x, n_bits=3, rounding_threshold_bits=rounding)
    program = module.program
    assert program.input_domains == [(0, 7)] == module.input_ranges
    assert [step.n_elements for step in program.table_lookups] == [3]  # one per output
    # every input the module accepts, and some it clips
    every = all_inputs(program, program.input_domains)
    assert len(every[0]) == 64
    np.testing.assert_array_equal(program.run(*every), reference.program.run(*every))
    wide = np.random.default_rng(1).integers(-20, 20, size=(200, 2))
    np.testing.assert_array_equal(module.quantized_forward(wide), reference.quantized_forward(wide))
    np.testing.assert_array_equal(module.forward(x), reference.forward(x))


def test_tabulation_packs_every_element_of_an_input():
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    with tabulation_limit(0):
        program = build_quantized_module(_mlp(n_in=3), x, n_bits=2).program
    untouched = copy.deepcopy(program)
    domains = [(0, 3)]
    assert tabulate(program, domains, limit=64)
    every = all_inputs(untouched, domains)
    np.testing.assert_array_equal(program.run(*every), untouched.run(*every))
    assert not tabulate(program, domains, limit=64)  # once is enough


def test_no_tabulation_beyond_the_limit():
    x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    module = build_quantized_module(_mlp(n_in=3), x, n_bits=3)  # 8**3 = 512 combinations
    assert 8**3 > MAX_TABULATED_COMBINATIONS
    assert module.program.input_domains is None
    assert sum(step.n_elements for step in module.program.table_lookups) == 12
    q = tuple(quantizer.quantize(x) for quantizer in module.program.input_quantizers)
    assert not tabulate(module.program, input_domains(module.program.input_quantizers, _input_ranges(q)))


def test_no_tabulation_of_a_program_without_lookups():
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    module = build_quantized_module(torch.nn.Linear(2, 3), x, n_bits=3)
    assert module.program.input_domains is None and not module.program.table_lookups


@pytest.fixture(scope="module")
def spec_qat_net():
    """The specification's QATPrunedSimpleNet, smaller: 20 hidden, 10 non-zero, 2 epochs."""
    from fheestimators import make_checkerboard

    X_train, X_test, y_train, _ = make_checkerboard()
    torch.manual_seed(0)
    model = train(QATPrunedSimpleNet(20), X_train[:2000], y_train[:2000], epochs=2, max_non_zero=10)
    module = compile_brevitas_qat_model(model, X_train)
    return model, module, X_test.astype(np.float32)


def test_spec_qat_net_is_one_small_lookup_per_output(spec_qat_net):
    _, module, _ = spec_qat_net
    circuit = module.fhe_circuit
    assert circuit.programmable_bootstrap_count == 2
    # 3-bit narrow-range inputs of the board's [0, 1] points: 0 to 3 each, 16 combinations
    assert module.input_ranges == module.program.input_domains == [(0, 3)]
    report = module.layer_reports()
    assert [(r.name, r.lookup_bits, r.table_lookups) for r in report] == [("tabulated", 4, 2)]
    assert "program on 16 inputs" in module.report()


def test_spec_qat_net_agrees_with_brevitas_in_every_mode(spec_qat_net):
    model, module, X_test = spec_qat_net
    brevitas = logits(model, X_test).argmax(1)
    assert np.array_equal(module.forward(X_test).argmax(1), brevitas)
    assert np.array_equal(module.forward(X_test, fhe="simulate").argmax(1), brevitas)
    executed = module.forward(X_test[:3], fhe="execute")
    np.testing.assert_array_equal(executed, module.forward(X_test[:3]))
    assert np.array_equal(executed.argmax(1), brevitas[:3])


def test_inputs_over_the_quantizers_whole_range_are_tabulated_too(spec_qat_net):
    model, _, X_test = spec_qat_net
    inputset = np.concatenate([X_test, [[-1.0, -1.0]]]).astype(np.float32)
    module = build_quantized_module(model, inputset)
    # the narrow-range 3-bit quantizer stops at -3 and 3: 7 values each
    assert module.program.input_domains == [(-3, 3)] == module.input_ranges
    assert module.program.table_lookups[0].input_bounds[1] <= 48
    far = np.array([[-5.0, 9.0], [0.2, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(module.forward(far).argmax(1), logits(model, far).argmax(1))


def test_tabulated_circuit_runs_inputs_it_never_saw():
    """The circuit's bounds come from every combination, not the inputset: no overflow elsewhere."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    module = compile_torch_model(_mlp(hidden=4), x, n_bits=2)  # 4 x 4 combinations
    assert module.fhe_circuit.programmable_bootstrap_count == 3
    corner = x[np.argmax(x.sum(axis=1))][None] * 10
    every = all_inputs(module.program, module.program.input_domains)[0]
    np.testing.assert_array_equal(module.quantized_forward(every, fhe="simulate"), module.quantized_forward(every))
    np.testing.assert_array_equal(module.forward(corner, fhe="execute"), module.forward(corner))


class _TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(2, 4), torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), self.c(h).reshape(-1, 1, 2)


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 4), torch.nn.Linear(4, 2)

    def forward(self, x, y):
        return self.b(torch.relu(self.a(torch.cat([x, y], dim=1))))


def test_several_outputs_of_any_shape_read_one_table():
    torch.manual_seed(0)
    model, x = _TwoOutputs(), np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    with tabulation_limit(0):
        reference = build_quantized_module(model, x, n_bits=2)
    module = compile_torch_model(model, x, n_bits=2)
    assert module.fhe_circuit.programmable_bootstrap_count == 5
    every = all_inputs(module.program, module.program.input_domains)
    for tabulated, untabulated in zip(module.program.run(*every), reference.program.run(*every)):
        np.testing.assert_array_equal(tabulated, untabulated)
    clear = module.forward(x[:2])
    for executed, expected in zip(module.forward(x[:2], fhe="execute"), clear):
        np.testing.assert_array_equal(executed, expected)


def test_several_inputs_are_packed_together():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 1)).astype(np.float32), rng.normal(size=(200, 1)).astype(np.float32)
    with tabulation_limit(0):
        reference = build_quantized_module(_TwoInputs(), (x, y), n_bits=3)
    torch.manual_seed(0)
    module = build_quantized_module(_TwoInputs(), (x, y), n_bits=3)
    assert module.program.input_domains == [(0, 7), (0, 7)]
    every = all_inputs(module.program, module.program.input_domains)
    np.testing.assert_array_equal(module.program.run(*every), reference.program.run(*every))
