"""scikit-learn API of the estimators: dump/load, fit_benchmark, check_estimator, model selection, bad input."""
import logging
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import skorch
import torch
from brevitas.nn.quant_layer import QuantLayerMixin
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

import fheestimators
from fheestimators.sklearn import FloatMLP, NeuralNetClassifier, NeuralNetRegressor, load

# Tiny, seeded networks: one hidden layer of 4, 3-bit inputs, weights and activations.
TINY = dict(
    module__n_layers=2, module__n_hidden=4, module__n_input_bits=3, module__n_w_bits=3, module__n_a_bits=3,
    max_epochs=10, lr=0.1, batch_size=32, random_state=0,
)
# For fhe="execute": 2-bit weights and activations keep accumulators narrow (fast keys), and
# without rounding the encrypted results equal the clear ones exactly (concrete-python's
# strict error probability, not the estimators' looser default, for exact comparisons).
EXECUTABLE = dict(TINY, module__n_w_bits=2, module__n_a_bits=2, rounding_threshold_bits=None, global_p_error=1e-5)
# scikit-learn's checks fit over a hundred times, and a fit is mostly compilation: a single
# linear layer compiles fastest. The checks are about the API (validation, fitted state,
# pickling, determinism, accuracy above 0.83 and R² above 0.5), which is the same whatever the
# depth; TINY passes them too, a quarter slower. The other tests use TINY.
CHECKED = {key: value for key, value in TINY.items() if key not in ("module__n_hidden", "module__n_a_bits")}
CHECKED["module__n_layers"] = 1
# QATMLP's defaults, as get_params() must show them
QATMLP_DEFAULTS = {
    "module__n_layers": 3, "module__n_hidden": None, "module__activation": torch.nn.Tanh,
    "module__n_w_bits": 6, "module__n_a_bits": 8, "module__n_input_bits": 8, "module__n_output_w_bits": 3,
    "module__max_non_zero": None, "module__n_accum_bits": None,
}

# The scikit-learn checks that cannot pass, with the reason. Every other check must pass;
# xfail_strict makes a listed check that starts passing fail the test, so the list stays true.
EXPECTED_FAILED_CHECKS = {
    "check_no_attributes_set_in_init": (
        "skorch's NeuralNet.__init__ sets history_, initialized_ and virtual_params_, and keeps "
        "routed settings such as module__n_hidden as attributes: that is how skorch passes them "
        "to the module, optimizer and callbacks, and the estimators are skorch nets"
    ),
}


@pytest.fixture(scope="module")
def clf_data():
    X, y = make_classification(n_samples=120, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    return X, np.array(["cat", "dog"])[y]  # float64 X and string labels, as users have them


@pytest.fixture(scope="module")
def reg_data():
    X, y = make_regression(n_samples=120, n_features=4, n_informative=2, random_state=0)
    return X, y / np.abs(y).max()


@pytest.fixture(scope="module")
def classifier(clf_data):
    return NeuralNetClassifier(**TINY).fit(*clf_data)


@pytest.fixture(scope="module")
def regressor(reg_data):
    return NeuralNetRegressor(**TINY).fit(*reg_data)


@pytest.fixture(scope="module")
def executable_classifier(clf_data):
    return NeuralNetClassifier(**EXECUTABLE).fit(*clf_data)


# -- dump and load ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_dump_and_load_predict_the_same_in_the_clear_and_in_simulation(kind, request, tmp_path):
    model = request.getfixturevalue(kind)
    X, y = request.getfixturevalue("clf_data" if kind == "classifier" else "reg_data")
    path = tmp_path / "model.pkl"
    model.dump(path)
    loaded = load(str(path))  # a str works as well as a Path
    assert type(loaded) is type(model) and loaded is not model
    assert loaded.fhe_circuit is not model.fhe_circuit  # compiled again, not shared
    assert loaded.get_params()["module__n_hidden"] == 4 and loaded.random_state == 0
    for fhe in ("disable", "simulate"):
        np.testing.assert_array_equal(loaded.predict(X, fhe=fhe), model.predict(X, fhe=fhe))
    if kind == "classifier":
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
        np.testing.assert_array_equal(loaded.predict_proba(X, fhe="simulate"), model.predict_proba(X, fhe="simulate"))
    assert loaded.score(X, y) == model.score(X, y)


def test_dump_and_load_predict_the_same_encrypted(executable_classifier, clf_data, tmp_path):
    # the original's encrypted results equal its clear ones: test_first_execute_generates_keys_with_a_message
    X, _ = clf_data
    executable_classifier.dump(tmp_path / "clf.pkl")
    loaded = fheestimators.load(tmp_path / "clf.pkl")
    encrypted = loaded.predict_proba(X[:2], fhe="execute")
    np.testing.assert_array_equal(encrypted, executable_classifier.predict_proba(X[:2], fhe="disable"))
    np.testing.assert_array_equal(encrypted, executable_classifier.predict_proba(X[:2], fhe="simulate"))
    np.testing.assert_array_equal(loaded.predict(X[:2], fhe="execute"), executable_classifier.predict(X[:2]))


def test_load_keeps_compile_settings_and_feature_names(clf_data, tmp_path):
    X, y = clf_data
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = NeuralNetClassifier(**TINY).fit(frame, y)
    model.compile(frame, p_error=0.05)  # recompiled by hand: the loaded model must keep this p_error
    model.dump(tmp_path / "clf.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "X does not have valid feature names"
        loaded = load(tmp_path / "clf.pkl")
        np.testing.assert_array_equal(loaded.predict_proba(frame, fhe="simulate"),
                                      model.predict_proba(frame, fhe="simulate"))
    assert (loaded.fhe_circuit.p_error == model.fhe_circuit.p_error
            != NeuralNetClassifier(**TINY).fit(frame, y).fhe_circuit.p_error)
    assert list(loaded.feature_names_in_) == ["a", "b", "c", "d"]


def test_dump_needs_a_fitted_model_and_load_needs_a_dumped_one(tmp_path):
    with pytest.raises(NotFittedError):
        NeuralNetRegressor(**TINY).dump(tmp_path / "unfitted.pkl")
    with open(tmp_path / "other.pkl", "wb") as file:
        pickle.dump({"not": "a model"}, file)
    with pytest.raises(TypeError, match="holds a dict, not an estimator saved with dump"):
        load(tmp_path / "other.pkl")


# -- fit_benchmark ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_fit_benchmark_returns_the_model_and_its_float_twin(kind, request):
    X, y = request.getfixturevalue("clf_data" if kind == "classifier" else "reg_data")
    estimator = (NeuralNetClassifier if kind == "classifier" else NeuralNetRegressor)(**TINY)
    model, float_model = estimator.fit_benchmark(X, y)
    assert model is estimator and model.fhe_circuit is not None

    # a plain skorch net on a plain float torch module: no Brevitas layer, no circuit
    assert isinstance(float_model, skorch.NeuralNetClassifier if kind == "classifier" else skorch.NeuralNetRegressor)
    assert isinstance(float_model.module_, FloatMLP)
    assert not any(isinstance(m, QuantLayerMixin) for m in float_model.module_.modules())
    assert all(type(m).__module__.startswith("torch.nn") for m in float_model.module_.layers)
    assert all(p.dtype == torch.float32 for p in float_model.module_.parameters())
    assert not hasattr(float_model, "quantized_module_")

    # the same architecture and the same skorch settings
    shapes = [tuple(m.weight.shape) for m in model.module_.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in float_model.module_.modules() if isinstance(m, torch.nn.Linear)] == shapes
    for name in ("lr", "max_epochs", "batch_size", "optimizer", "criterion", "train_split"):
        assert getattr(float_model, name) == getattr(model, name), name
    assert len(float_model.history) == len(model.history) == TINY["max_epochs"]

    # both predict the same kind of output, so their scores compare directly
    float_pred = float_model.predict(X)
    assert float_pred.shape == model.predict(X).shape == (len(X),)
    if kind == "classifier":
        assert set(float_pred) <= {"cat", "dog"}
        np.testing.assert_array_equal(float_model.classes_, model.classes_)
        assert float_model.score(X, y) > 0.7 and model.score(X, y) > 0.7
    else:
        assert float_model.score(X, y) > 0.5 and model.score(X, y) > 0.5


def test_fit_benchmark_needs_the_default_module(clf_data):
    class Custom(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="fit_benchmark builds the float twin of QATMLP"):
        NeuralNetClassifier(module=Custom).fit_benchmark(*clf_data)


# -- scikit-learn's own checks ----------------------------------------------------------------------


@parametrize_with_checks(
    [NeuralNetClassifier(**CHECKED), NeuralNetRegressor(**CHECKED)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
    xfail_strict=True,
)
def test_scikit_learn_checks(estimator, check, monkeypatch):
    # scikit-learn skips its array-API check (numpy inputs with dispatch on) unless this is set
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


# -- parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_get_params_lists_the_same_keys_before_and_after_fit(kind, request):
    # scikit-learn's checks compare the values of the keys known before fit, not the keys
    fitted = request.getfixturevalue(kind)
    keys = fitted.get_params().keys()
    assert clone(fitted).get_params().keys() == keys
    assert type(fitted)(**TINY).get_params().keys() == keys
    assert {"callbacks__prune__max_non_zero", "callbacks__one_cycle__pct_start"} <= keys


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_callback_settings_set_before_fit_take_effect(kind, request):
    X, y = request.getfixturevalue("clf_data" if kind == "classifier" else "reg_data")
    model = (NeuralNetClassifier if kind == "classifier" else NeuralNetRegressor)(**{**TINY, "max_epochs": 2})
    model.set_params(callbacks__prune__max_non_zero=2, callbacks__one_cycle__pct_start=0.5)
    params = model.get_params()  # what was set, not the callbacks' own defaults
    assert (params["callbacks__prune__max_non_zero"], params["callbacks__one_cycle__pct_start"]) == (2, 0.5)
    model.fit(X, y)
    assert model.get_params()["callbacks__prune__max_non_zero"] == 2
    assert dict(model.callbacks_)["one_cycle"].pct_start == 0.5
    first = model.module_.linear_layers[0]  # 4 inputs per neuron, pruned to 2
    assert int((first.weight != 0).sum(dim=1).max()) <= 2


@pytest.mark.parametrize("estimator", [NeuralNetClassifier, NeuralNetRegressor])
def test_get_params_shows_the_defaults_that_decide_the_model_and_its_cost(estimator):
    params = estimator().get_params()
    assert {name: params[name] for name in QATMLP_DEFAULTS} == QATMLP_DEFAULTS
    assert params["module__linear_term"] is (estimator is NeuralNetRegressor)  # the regressor's own default
    assert "module__n_inputs" not in params and "module__n_outputs" not in params  # from the data
    assert params["p_error"] == 0.3 and params["global_p_error"] is None
    # __init__ keeps the parameters as given: clone does not turn the defaults into settings
    assert "module__n_layers" not in estimator().get_params(deep=False)
    assert estimator(module__n_w_bits=3).get_params()["module__n_w_bits"] == 3
    assert estimator().set_params(module__n_layers=2).get_params()["module__n_layers"] == 2


def test_get_params_shows_the_defaults_of_another_module():
    class Custom(torch.nn.Module):
        def __init__(self, width=5):
            super().__init__()
            self.layer = torch.nn.Linear(4, width)

    params = NeuralNetClassifier(module=Custom).get_params()
    assert params["module__width"] == 5 and not any(name in params for name in QATMLP_DEFAULTS)
    # swapping the module leaves none of QATMLP's defaults behind to break the new one
    swapped = NeuralNetClassifier().set_params(module=Custom).initialize()
    assert swapped.module_.layer.out_features == 5


def test_grid_search_over_module_and_callback_settings(clf_data):
    X, y = clf_data
    grid = {"module__n_w_bits": [2, 3], "callbacks__prune__max_non_zero": [2]}
    search = GridSearchCV(NeuralNetClassifier(**{**TINY, "max_epochs": 2}), grid, cv=2).fit(X, y)
    best = search.best_estimator_
    assert best.get_params()["module__n_w_bits"] == search.best_params_["module__n_w_bits"]
    assert int((best.module_.linear_layers[0].weight != 0).sum(dim=1).max()) <= 2


def test_global_p_error_replaces_the_default_p_error(clf_data):
    X, y = clf_data
    fast = {**TINY, "max_epochs": 1}
    model = NeuralNetClassifier(**fast, global_p_error=1e-3).fit(X, y)
    assert (model.compile_settings_["p_error"], model.compile_settings_["global_p_error"]) == (None, 1e-3)
    assert model.fhe_circuit.global_p_error <= 1e-3
    # both None: concrete-python's own default, a strict bound for the whole circuit
    strict = NeuralNetClassifier(**fast, p_error=None).fit(X, y)
    assert (strict.compile_settings_["p_error"], strict.compile_settings_["global_p_error"]) == (None, None)
    assert strict.fhe_circuit.global_p_error < 1e-3
    # two probabilities set by the user: refused before training
    with pytest.raises(ValueError, match=r"p_error=0.01 and global_p_error=0.001 are both set: give one"):
        NeuralNetClassifier(**fast, p_error=0.01, global_p_error=1e-3).fit(X, y)


def test_overflow_error_advises_the_estimator_settings():
    # 200 features of 8 bits into 8-bit weights, without rounding: a lookup of more than 16 bits
    X, y = make_classification(n_samples=40, n_features=200, random_state=0)
    model = NeuralNetClassifier(**{**TINY, "max_epochs": 1, "module__n_input_bits": 8, "module__n_w_bits": 8},
                                rounding_threshold_bits=None)
    with pytest.raises(ValueError, match="the limit is 16 bits") as error:
        model.fit(X, y)
    message = str(error.value)
    assert "module__max_non_zero" in message and "module__n_w_bits" in message
    assert "rounding_threshold_bits" in message and "torch.nn.utils.prune" not in message


# -- model selection ----------------------------------------------------------------------------------


def test_grid_search_in_two_processes(clf_data):
    X, y = clf_data
    # a module setting and a skorch setting; two candidates keep the worker processes busy
    grid = [{"module__n_hidden": [2], "lr": [0.02]}, {"module__n_hidden": [4], "lr": [0.1]}]
    search = GridSearchCV(NeuralNetClassifier(**TINY), grid, cv=2, n_jobs=2).fit(X, y)
    assert search.n_splits_ == 2 and len(search.cv_results_["params"]) == 2
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert (search.best_params_["module__n_hidden"], search.best_params_["lr"]) in ((2, 0.02), (4, 0.1))
    best = search.best_estimator_
    assert best.module_.linear_layers[0].out_features == search.best_params_["module__n_hidden"]
    assert best.predict(X[:3], fhe="simulate").shape == (3,)


def test_cross_val_score(reg_data):
    X, y = reg_data
    scores = cross_val_score(NeuralNetRegressor(**TINY), X, y, cv=KFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert scores.mean() > 0.3


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fhe", ["disable", "simulate", "execute"])
def test_predicting_before_fit_raises_not_fitted(fhe, reg_data):
    X, _ = reg_data
    with pytest.raises(NotFittedError):
        NeuralNetRegressor(**TINY).predict(X, fhe=fhe)
    with pytest.raises(NotFittedError):
        NeuralNetClassifier(**TINY).predict_proba(X, fhe=fhe)


@pytest.mark.parametrize("fhe", ["disable", "simulate", "execute"])
def test_wrong_number_of_features_is_caught_before_fhe(fhe, regressor, reg_data):
    X, _ = reg_data
    for wrong in (X[:2, :3], np.hstack([X[:2], X[:2]])):
        with pytest.raises(ValueError, match=f"X has {wrong.shape[1]} features, but NeuralNetRegressor is expecting 4"):
            regressor.predict(wrong, fhe=fhe)
    with pytest.raises(ValueError, match="Expected 2D array"):
        regressor.predict(X[0], fhe=fhe)
    assert regressor.fhe_circuit.keys is None or not regressor.fhe_circuit.keys.are_generated


def test_nan_and_inf_are_caught_in_fit_and_predict(classifier, clf_data, reg_data):
    X, y = clf_data
    bad = X.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        classifier.predict(bad, fhe="simulate")
    with pytest.raises(ValueError, match="Input X contains NaN"):
        NeuralNetClassifier(**TINY).fit(bad, y)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        classifier.predict_proba(bad)
    Xr, yr = reg_data
    yr = yr.copy()
    yr[0] = np.nan
    with pytest.raises(ValueError, match="Input y contains NaN"):
        NeuralNetRegressor(**TINY).fit(Xr, yr)


def test_unknown_fhe_mode_lists_the_valid_ones(classifier, clf_data):
    X, _ = clf_data
    for mode in ("encrypted", None, 1):
        with pytest.raises(ValueError, match="use one of 'disable', 'simulate', 'execute'"):
            classifier.predict(X[:1], fhe=mode)
    np.testing.assert_array_equal(classifier.predict(X[:3], fhe="SIMULATE"), classifier.predict(X[:3]))


def test_classifier_rejects_continuous_targets_and_regressor_rejects_labels(clf_data):
    X, y = clf_data
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        NeuralNetClassifier(**TINY).fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError, match="could not convert string to float"):
        NeuralNetRegressor(**TINY).fit(X, y)


def test_bad_shapes_and_types_in_fit(clf_data):
    X, y = clf_data
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        NeuralNetClassifier(**TINY).fit(X, y[:-1])
    with pytest.raises(ValueError, match="requires y to be passed"):
        NeuralNetClassifier(**TINY).fit(X, None)
    with pytest.raises(ValueError, match="could not convert string to float"):
        NeuralNetClassifier(**TINY).fit(X.astype(str).astype(object) + "x", y)


def test_partial_fit_continues_training_and_checks_labels(clf_data):
    X, y = clf_data
    clf = NeuralNetClassifier(**TINY).partial_fit(X[:60], y[:60], classes=["cat", "dog", "owl"])
    assert list(clf.classes_) == ["cat", "dog", "owl"]
    clf.partial_fit(X[60:], y[60:])
    assert len(clf.history) == 2 * TINY["max_epochs"]  # the same network, trained further
    np.testing.assert_array_equal(clf.data_min_, X.min(axis=0).astype(np.float32))  # the range of both calls
    np.testing.assert_array_equal(clf.data_max_, X.max(axis=0).astype(np.float32))
    assert set(clf.predict(X, fhe="simulate")) <= {"cat", "dog", "owl"}
    with pytest.raises(ValueError, match=r"y has labels \['emu'\] that are not in classes_"):
        clf.partial_fit(X[:2], np.array(["emu", "cat"]))
    with pytest.raises(ValueError, match="X has 3 features, but NeuralNetClassifier is expecting 4"):
        clf.partial_fit(X[:4, :3], y[:4])


def test_first_execute_generates_keys_with_a_message(executable_classifier, clf_data, monkeypatch, capsys, caplog):
    X, _ = clf_data
    model = executable_classifier  # fitted and compiled; nothing has run it encrypted
    assert model.fhe_circuit.keys is None or not model.fhe_circuit.keys.are_generated
    monkeypatch.setattr(model, "verbose", 1)  # verbose prints the message and a progress bar
    with caplog.at_level(logging.INFO, logger="fheestimators.sklearn.estimators"):
        encrypted = model.predict_proba(X[:2], fhe="execute")
    assert "generating FHE keys for NeuralNetClassifier" in caplog.text
    assert "Generating FHE keys" in capsys.readouterr().out
    assert model.fhe_circuit.keys.are_generated
    np.testing.assert_array_equal(encrypted, model.predict_proba(X[:2], fhe="disable"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fheestimators.sklearn.estimators"):
        model.predict(X[2:3], fhe="execute")  # the circuit keeps its keys: no second generation
    assert "generating FHE keys" not in caplog.text
