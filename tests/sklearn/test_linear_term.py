"""The regressor's linear term: a ridge regression fitted before training, never trained, compiled without a lookup."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from fheestimators.sklearn import NeuralNetRegressor
from fheestimators.sklearn.linear_term import ALPHAS, OUTPUT_INIT_SCALE, fit_linear_term
from fheestimators.sklearn.qat_module import QATMLP

SMALL = dict(module__n_layers=2, module__n_hidden=4, module__n_input_bits=4, module__n_w_bits=4,
             module__n_a_bits=4, lr=0.05, batch_size=32, random_state=0)


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    weights = np.array([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0]])
    return X, (X @ weights.T + [3.0, -1.0]).astype(np.float32), weights


def test_fit_linear_term_sets_the_ridge_solution_and_starts_the_network_from_it(linear_data):
    X, y, weights = linear_data
    torch.manual_seed(0)
    module = QATMLP(4, 2, n_layers=2, n_hidden=4, linear_term=True)
    assert not module.linear_term_layer.weight.requires_grad
    assert torch.all(module.linear_term_layer.weight == 0)
    output_weights = module.linear_layers[-1].weight.detach().clone()
    fit_linear_term(module, X, y)
    # noiseless data: leave-one-out picks the smallest penalty, and ridge finds the weights
    assert module.linear_term_layer.weight.numpy() == pytest.approx(weights, abs=1e-3)
    assert module.linear_layers[-1].bias.detach().numpy() == pytest.approx([3.0, -1.0], abs=1e-3)
    assert torch.allclose(module.linear_layers[-1].weight, output_weights * OUTPUT_INIT_SCALE)


def test_a_module_without_linear_term_is_left_alone(linear_data):
    X, y, _ = linear_data
    torch.manual_seed(0)
    module = QATMLP(4, 2, n_layers=2, n_hidden=4)
    before = {name: value.clone() for name, value in module.state_dict().items()}
    fit_linear_term(module, X, y)
    assert module.linear_term_layer is None
    assert all(torch.equal(before[name], value) for name, value in module.state_dict().items())


def test_regressor_trains_around_a_fixed_ridge_term_and_compiles_it(linear_data):
    X, y, _ = linear_data
    y = y[:, 0]
    reg = NeuralNetRegressor(**SMALL, max_epochs=1).fit(X, y)
    # training leaves the term at ridge's fit of the normalized targets, on all the rows as the network reads them
    ridge = RidgeCV(alphas=ALPHAS).fit(reg.input_scaler_.transform(X), (y - y.mean()) / y.std())
    assert reg.module_.linear_term_layer.weight.numpy().ravel() == pytest.approx(ridge.coef_, abs=1e-4)
    # one epoch of the network alone is far from the target; with the term, the circuit is close to it
    plain = NeuralNetRegressor(**SMALL, max_epochs=1, module__linear_term=False).fit(X, y)
    for fhe in ("disable", "simulate"):
        assert r2_score(y, reg.predict(X, fhe=fhe)) > 0.97, fhe
        assert r2_score(y, plain.predict(X, fhe=fhe)) < 0.8, fhe


def test_the_compiled_sum_of_term_and_network_is_exact_at_a_negligible_error_probability(linear_data):
    X, y, _ = linear_data
    # exact lookups, a mistake per 10^5 samples (the simulation's draws are seeded): the clear program's values
    tiny = {**SMALL, "module__n_w_bits": 2, "module__n_a_bits": 2, "module__n_input_bits": 3,
            "module__linear_term_w_bits": 3}
    reg = NeuralNetRegressor(**tiny, max_epochs=1, rounding_threshold_bits=None, global_p_error=1e-5).fit(X, y[:, 0])
    assert np.array_equal(reg.predict(X, fhe="simulate"), reg.predict(X))
    # the term, the wider of the two, is added as it is: the lookups are the hidden layer's and the network's side
    lookups = [step.name for step in reg.quantized_module_.program.table_lookups]
    assert len(lookups) == 2 and not any("linear_term" in name for name in lookups), lookups
    # its full-width sum is decrypted exactly
    assert np.array_equal(reg.predict(X[:2], fhe="execute"), reg.predict(X[:2]))


def test_a_regressor_saved_without_the_term_loads_without_it(linear_data):
    X, y, _ = linear_data
    reg = NeuralNetRegressor(**SMALL, max_epochs=1, module__linear_term=False).fit(X, y[:, 0])
    del reg.module__linear_term  # as saved by the versions before the term existed
    state = reg.__getstate__()
    loaded = NeuralNetRegressor.__new__(NeuralNetRegressor)
    loaded.__setstate__(state)
    assert loaded.module_.linear_term_layer is None and loaded.get_params()["module__linear_term"] is False
    assert loaded.predict(X[:5], fhe="simulate") == pytest.approx(reg.predict(X[:5], fhe="simulate"))
