"""The batched simulation: equal to concrete-python's when nothing is random, and drawing
the bootstrap's noise as FHE does (the mistakes of approximate rounding and of exact
rounding's own bootstraps included) otherwise."""
import numpy as np
import pytest
import torch
from concrete import fhe

from fheestimators.fhe.execution import LookupNoise
from fheestimators.quantization.steps import TableLookup
from fheestimators.torch.compile import compile_torch_model

UNIT = 16  # 4 bits removed before the lookup


def _step(exactness: str, lsbs: int = 4) -> TableLookup:
    return TableLookup("lut", ["x"], "y", function=lambda v: v, lsbs_to_remove=lsbs, exactness=exactness,
                       input_bounds=(0, 1023), sample_shape=(64,))


def _off_rate(step, noise, x) -> float:
    return float(np.mean(noise(step, x) != step.rounded(x)))


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


def test_unrounded_lookups_err_with_probability_p_error():
    x = np.random.default_rng(0).integers(0, 1000, (2000, 64))
    assert abs(_off_rate(_step("exact", lsbs=0), LookupNoise(p_error=0.1, seed=0), x) - 0.1) < 0.01
    np.testing.assert_array_equal(LookupNoise(p_error=0.0)(_step("exact"), x), _step("exact").rounded(x))


def test_exact_rounding_draws_a_bootstrap_per_removed_bit():
    x = np.random.default_rng(0).integers(0, 1000, (2000, 64))
    rates = [_off_rate(_step("exact", lsbs), LookupNoise(p_error=0.1, seed=0), x) for lsbs in (1, 2, 4)]
    # the table's p_error plus what the removed bits' bootstraps add (17.9% at 4 bits)
    assert 0.1 + 0.02 < rates[0] < rates[1] < rates[2] < 0.2
    step, noise = _step("exact"), LookupNoise(p_error=0.1, seed=0)
    read, exact = noise(step, x), step.rounded(x)
    assert abs(np.mean(read > exact) - np.mean(read < exact)) < 0.01  # off by an entry either way
    # the removed bits near the middle are read wrong most: a mistake on the highest
    # leaves the value half an entry away
    middle, edge = np.isin(x % UNIT, (7, 8)), np.isin(x % UNIT, (0, 15))
    assert np.mean(read[middle] != exact[middle]) > np.mean(read[edge] != exact[edge]) + 0.03
    # without mistakes it is rounding half up, signed too
    signed = TableLookup("lut", ["x"], "y", function=lambda v: v, lsbs_to_remove=3, exactness="exact",
                         input_bounds=(-600, 500), sample_shape=(64,))
    x = np.random.default_rng(1).integers(-600, 500, (500, 64))
    np.testing.assert_array_equal(LookupNoise(p_error=1e-12, seed=0)(signed, x), signed.rounded(x))


def test_exact_rounding_draws_are_keyed_by_row():
    step, x = _step("exact"), np.random.default_rng(0).integers(0, 1000, (200, 64))
    batch = LookupNoise(p_error=0.1).for_rows([x])(step, x)
    alone = LookupNoise(p_error=0.1).for_rows([x[5:6]])(step, x[5:6])
    np.testing.assert_array_equal(alone, batch[5:6])
    other_seed = LookupNoise(p_error=0.1).for_rows([x], random_state=1)(step, x)
    assert not np.array_equal(other_seed, batch)


def test_approximate_rounding_errs_near_the_middle_between_entries():
    step, noise = _step("approximate"), LookupNoise(p_error=0.02, seed=0)
    x = np.random.default_rng(0).integers(0, 1000, (2000, 64))
    # far more often than p_error: the removed bits place the input between two entries
    assert 0.15 < _off_rate(step, noise, x) < 0.19
    position = x % UNIT  # rounding half up turns at 8; concrete-python's middle is at 7.5
    middle = np.mean(noise(step, x)[(position == 7) | (position == 8)]
                     != step.rounded(x)[(position == 7) | (position == 8)])
    assert 0.4 < middle < 0.6
    near_entry = (position == 0) | (position == 15)
    assert np.mean(noise(step, x)[near_entry] != step.rounded(x)[near_entry]) < 0.05
    # without noise, approximate rounding reads what rounding half up reads
    np.testing.assert_array_equal(LookupNoise(p_error=0.0)(step, x), step.rounded(x))


# 0.02, and the estimators' default 0.3, where the bootstrap's own errors are as frequent as rounding's
@pytest.mark.parametrize("p_error", [0.02, 0.3])
def test_approximate_rounding_errs_in_fhe_as_simulated(p_error):
    """Real encryption: 768 approximately rounded lookups err about as often as drawn."""
    step = _step("approximate")
    inputset = [np.full(64, 0), np.full(64, 1000), *np.random.default_rng(1).integers(0, 1001, (5, 64))]
    circuit = fhe.Compiler(lambda x: step.fhe(x), {"x": "encrypted"}).compile(inputset, p_error=p_error)
    x = np.random.default_rng(2).integers(100, 900, (12, 64))
    encrypted = np.stack([circuit.encrypt_run_decrypt(row) for row in x])
    encrypted_rate = np.mean(encrypted != step.numpy(x))
    # the simulated rate of the same inputs, over 50 draws: its own sampling error is negligible
    tiled = np.tile(x, (50, 1))
    simulated_rate = np.mean(step.lookup(LookupNoise.from_circuit(circuit, seed=0)(step, tiled)) != step.numpy(tiled))
    if p_error < 0.1:  # the removed bits, not p_error, set the rate
        assert encrypted_rate > 5 * circuit.p_error
    assert abs(encrypted_rate - simulated_rate) < 0.07  # about 4 standard deviations of the encrypted estimate


def test_exact_rounding_errs_in_fhe_as_simulated():
    """Real encryption: 384 exactly rounded lookups err about as often as drawn, more than p_error."""
    # a 6-bit accumulator rounded to 3 bits: 4 bootstraps per element, 3 of them for the removed bits
    step = TableLookup("lut", ["x"], "y", function=lambda v: v, lsbs_to_remove=3, exactness="exact",
                       input_bounds=(0, 59), sample_shape=(32,))
    inputset = [np.full(32, 0), np.full(32, 59), *np.random.default_rng(1).integers(0, 60, (5, 32))]
    circuit = fhe.Compiler(lambda x: step.fhe(x), {"x": "encrypted"}).compile(inputset, p_error=0.1)
    x = np.random.default_rng(2).integers(0, 60, (12, 32))
    encrypted = np.stack([circuit.encrypt_run_decrypt(row) for row in x])
    encrypted_rate = np.mean(encrypted != step.numpy(x))
    tiled = np.tile(x, (100, 1))
    simulated_rate = np.mean(step.lookup(LookupNoise.from_circuit(circuit, seed=0)(step, tiled)) != step.numpy(tiled))
    # one draw per lookup would give p_error; the removed bits' bootstraps add 7 points
    # (encrypted: 16.1% of these 384 reads in one run, 16.7% of 1,536 in another; 17.0% drawn)
    assert simulated_rate > 1.5 * circuit.p_error
    assert abs(encrypted_rate - simulated_rate) < 0.07  # about 3.5 standard deviations of the encrypted estimate


def test_approximate_rounding_errs_as_in_concrete_simulation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x = torch.randn(300, 3).numpy()
    # concrete-python's default p_error is tiny: the mistakes come from the removed bits
    module = compile_torch_model(model, x, n_bits=5, rounding_threshold_bits={"n_bits": 4, "method": "approximate"})
    q = module.quantize_input(x)
    clear = module.quantized_forward(q)
    ours = module.quantized_forward(q, fhe="simulate")
    theirs = np.concatenate([module.fhe_circuit.simulate(q[i : i + 1]) for i in range(len(q))])
    ours_rate, theirs_rate = np.mean(ours != clear), np.mean(theirs != clear)
    # concrete-python draws approximate rounding's mistakes too (its draws are unseeded:
    # 24-31% of the outputs moved in four runs, against our 30%)
    assert theirs_rate > 0.15
    assert abs(ours_rate - theirs_rate) < 0.12
    np.testing.assert_array_equal(module.quantized_forward(q, fhe="simulate"), ours)  # reproducible


def _approximate_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(200, 3).numpy()
    return compile_torch_model(model, x, n_bits=5, rounding_threshold_bits={"n_bits": 4, "method": "approximate"},
                               p_error=0.1), x


def test_a_row_simulates_the_same_wherever_it_stands_in_the_batch():
    module, x = _approximate_module()
    batch = module.forward(x, fhe="simulate")
    alone = np.concatenate([module.forward(x[i : i + 1], fhe="simulate") for i in range(0, 200, 20)])
    np.testing.assert_array_equal(alone, batch[::20])
    shuffled = np.random.default_rng(0).permutation(200)
    np.testing.assert_array_equal(module.forward(x[shuffled], fhe="simulate"), batch[shuffled])


def test_random_state_changes_the_draws_and_seeds_them():
    module, x = _approximate_module()
    clear = module.forward(x)
    runs = {seed: module.forward(x, fhe="simulate", random_state=seed) for seed in (0, 1)}
    np.testing.assert_array_equal(module.forward(x, fhe="simulate", random_state=1), runs[1])
    assert not np.array_equal(runs[0], runs[1])
    # both draw mistakes, at about the same rate
    rates = [np.mean(np.any(run != clear, axis=1)) for run in runs.values()]
    assert min(rates) > 0.05 and abs(rates[0] - rates[1]) < 0.1


def test_the_row_draws_are_standard_normal():
    from fheestimators.fhe.execution import _gaussian, _mix

    draws = _gaussian(_mix(np.arange(200_000, dtype=np.uint64)))
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1) < 0.01
    assert abs(np.mean(np.abs(draws) < 1.96) - 0.95) < 0.005


def test_each_lookup_has_its_own_tag_and_wrap_width():
    module, _ = _approximate_module()
    noise = LookupNoise.from_circuit(module.fhe_circuit)
    tags = [step.tag for step in module.program.table_lookups]
    assert len(set(tags)) == len(tags) and set(tags) <= set(noise.bit_widths)
