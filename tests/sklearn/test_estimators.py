"""NeuralNetClassifier / NeuralNetRegressor: scikit-learn behaviour and the three FHE modes."""
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit

from fheestimators.sklearn import NeuralNetClassifier, NeuralNetRegressor
from fheestimators.sklearn.qat_module import QATMLP
from fheestimators.torch.compile import _build
from fheestimators.sklearn.estimators import DEFAULT_P_ERROR, WIDE_NETWORK, WIDE_WEIGHT_DECAY, _far_features


def build_quantized_module_from_brevitas(model, X):
    return _build(model, X, True, 8, None, brevitas=True)


SMALL = dict(module__n_layers=2, module__n_hidden=4, max_epochs=4, lr=0.05, batch_size=32)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=160, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    torch.manual_seed(0)
    return NeuralNetClassifier(**SMALL).fit(X, np.array(["no", "yes"])[y])


def test_classifier_predicts_labels_and_probabilities(fitted, data):
    X, _ = data
    pred = fitted.predict(X)
    assert set(pred) <= {"no", "yes"}
    assert list(fitted.classes_) == ["no", "yes"]
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(fitted.classes_[proba.argmax(1)], pred)


def test_classifier_learns(fitted, data):
    X, y = data
    assert fitted.score(X, np.array(["no", "yes"])[y]) > 0.7


def test_simulate_draws_approximate_rounding_mistakes_reproducibly(fitted, data):
    X, _ = data
    simulated = fitted.predict_proba(X, fhe="simulate")
    np.testing.assert_array_equal(fitted.predict_proba(X, fhe="simulate"), simulated)
    np.testing.assert_allclose(simulated.sum(axis=1), 1.0, rtol=1e-6)
    # a few lookups read the neighbouring entry: decisions move only near the boundary
    assert np.mean(simulated.argmax(1) == fitted.predict_proba(X).argmax(1)) >= 0.9


def test_simulate_equals_disable_with_exact_rounding(fitted, data):
    X, _ = data
    exact = pickle.loads(pickle.dumps(fitted))
    exact.compile(X, rounding_threshold_bits={"n_bits": 6, "method": "exact"}, global_p_error=1e-9)
    np.testing.assert_array_equal(exact.predict_proba(X, fhe="simulate"), exact.predict_proba(X))


def test_execute_on_one_sample(data):
    # without rounding (approximate rounding may move a value by one step in FHE) execute is exact
    X, y = data
    torch.manual_seed(0)
    tiny = dict(module__n_input_bits=3, module__n_w_bits=2, module__n_a_bits=2)  # ~6-bit accumulators
    clf = NeuralNetClassifier(**SMALL, **tiny, rounding_threshold_bits=None, global_p_error=1e-5).fit(X, y)
    assert clf.quantized_module_.max_bit_width <= 7
    np.testing.assert_allclose(clf.predict_proba(X[:1], fhe="execute"), clf.predict_proba(X[:1]), atol=1e-12)
    np.testing.assert_array_equal(clf.predict(X[:1], fhe="execute"), clf.predict(X[:1], fhe="simulate"))


def test_error_probability_given_replaces_the_default(data):
    X, y = data
    clf = NeuralNetClassifier(**SMALL, random_state=0).fit(X, y)
    assert (clf.compile_settings_["p_error"], clf.compile_settings_["global_p_error"]) == (DEFAULT_P_ERROR, None)
    assert clf.fhe_circuit.p_error <= DEFAULT_P_ERROR
    clf.compile(X, global_p_error=1e-3)
    assert (clf.compile_settings_["p_error"], clf.compile_settings_["global_p_error"]) == (None, 1e-3)
    assert clf.fhe_circuit.global_p_error <= 1e-3
    clf.set_params(global_p_error=1e-4).compile(X)  # the estimator's own setting, when compile gets none
    assert (clf.compile_settings_["p_error"], clf.compile_settings_["global_p_error"]) == (None, 1e-4)
    with pytest.raises(ValueError, match="not both"):
        clf.compile(X, p_error=0.01, global_p_error=0.05)


def test_without_rounding_the_circuit_is_the_trained_brevitas_network(fitted, data):
    X, _ = data
    with torch.no_grad():
        logits = fitted.module_(torch.from_numpy(X)).numpy()
    exact = build_quantized_module_from_brevitas(fitted.module_, X)
    np.testing.assert_allclose(exact.forward(X), logits, atol=1e-4)
    # the default rounding changes some logits, rarely the decision
    rounded = fitted.quantized_module_.forward(X)
    assert np.mean(rounded.argmax(1) == logits.argmax(1)) > 0.9


def test_pandas_input_and_float64(fitted, data):
    X, _ = data
    frame = pd.DataFrame(X.astype(np.float64), columns=list("abcd"))
    np.testing.assert_array_equal(fitted.predict(frame), fitted.predict(X))


def test_bad_inputs(fitted, data):
    X, _ = data
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X[:, :3])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(bad)
    with pytest.raises(ValueError, match="fhe="):
        fitted.predict(X, fhe="bogus")
    with pytest.raises(NotFittedError):
        NeuralNetClassifier().predict(X)
    with pytest.raises(ValueError, match="continuous|Unknown label"):
        NeuralNetClassifier(**SMALL).fit(X, np.linspace(0, 1, len(X)))


def test_pickle_round_trip(fitted, data):
    X, _ = data
    loaded = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict_proba(X, fhe="simulate"), fitted.predict_proba(X, fhe="simulate"))


def test_clone_and_params():
    clf = NeuralNetClassifier(module__n_hidden=7, lr=0.1, max_epochs=2)
    params = clone(clf).get_params()
    assert params["module__n_hidden"] == 7 and params["lr"] == 0.1 and params["max_epochs"] == 2
    assert hasattr(NeuralNetClassifier, "compile") and callable(clf.compile)


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_shows_a_bar_over_the_epochs_or_the_table(data, verbose, capsys):
    X, y = data
    NeuralNetClassifier(**SMALL, verbose=verbose).fit(X, y)
    out, err = capsys.readouterr()
    assert ("training" in err and "4/4" in err and "train_loss=" in err) == (verbose == 1)
    # skorch's table: a header and a row per epoch
    assert ("train_loss" in out and len(out.strip().splitlines()) >= 4 + 2) == (verbose == 2)
    if verbose == 0:
        assert "train_loss" not in out + err


def test_pruning_keeps_max_non_zero_weights_per_neuron(data):
    X, y = data
    clf = NeuralNetClassifier(**{**SMALL, "module__max_non_zero": 2}).fit(X, y)
    for layer in clf.module_.linear_layers:
        if layer.in_features > 2:
            assert int((layer.weight != 0).sum(dim=1).max()) <= 2


def test_pipeline_and_grid_search(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(**SMALL))
    search = GridSearchCV(pipe, {"neuralnetclassifier__module__n_hidden": [3, 4]}, cv=2, n_jobs=1)
    search.fit(X, y)
    assert search.best_params_["neuralnetclassifier__module__n_hidden"] in (3, 4)
    assert search.predict(X).shape == (len(X),)


def test_compile_warns_when_X_was_not_transformed_like_the_training_data():
    X, y = make_classification(n_samples=100, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    X_raw = X * 1000 + 5000  # large raw values: the network trains on them scaled
    fast = dict(max_epochs=2, module__n_hidden=4, module__n_w_bits=3, module__n_a_bits=3,
                rounding_threshold_bits={"n_bits": 4, "method": "exact"}, p_error=1e-9, random_state=0)
    pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(**fast)).fit(X_raw, y)
    X_scaled = pipe[0].transform(X_raw)
    np.testing.assert_allclose(pipe[-1].data_min_, X_scaled.min(axis=0), rtol=1e-5)
    with pytest.warns(UserWarning,
                      match=r"far from the training data .*transform X with the pipeline's preceding steps"):
        pipe[-1].compile(X_raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe[-1].compile(X_scaled)
    assert not [w for w in caught if "far from the training data" in str(w.message)]


@pytest.mark.parametrize("low, high, far", [
    (0.2, 0.8, False),  # inside
    (-0.9, 1.9, False),  # beyond on both sides, by less than the width
    (1.5, 1.7, True),  # no overlap
    (-1.5, 0.5, True),  # beyond by more than the width
    (-1.5, 2.5, True),
])
def test_far_means_no_overlap_or_beyond_by_more_than_the_training_width(low, high, far):
    found = _far_features(np.array([low, 2.0]), np.array([high, 2.0]), np.array([0.0, 2.0]), np.array([1.0, 2.0]))
    assert found.tolist() == ([0] if far else [])  # the constant feature 1 matches its training value


def test_regressor_multi_output():
    X, y = make_regression(n_samples=120, n_features=3, n_targets=2, random_state=0)
    y = (y / np.abs(y).max()).astype(np.float32)
    # seeded: the training (and so the circuit and its drawn mistakes) does not depend on the tests run before
    reg = NeuralNetRegressor(**SMALL, random_state=0).fit(X.astype(np.float32), y)
    pred = reg.predict(X)
    assert pred.shape == (120, 2)
    # approximate rounding's mistakes move a prediction by a few steps of the output
    # (0.3% to 0.5% of the range over random_state 0-7)
    assert np.mean(np.abs(reg.predict(X, fhe="simulate") - pred)) <= 0.05 * np.ptp(pred)


def test_output_layer_weight_bits_and_per_layer_widths(data):
    X, y = data
    clf, twin = NeuralNetClassifier(**{**SMALL, "module__n_layers": 3, "module__n_hidden": (5, 3),
                                       "module__n_w_bits": 6, "module__n_output_w_bits": 3},
                                    random_state=0).fit_benchmark(X, y)
    layers = clf.module_.linear_layers
    assert [layer.out_features for layer in layers] == [5, 3, 2]
    float_layers = [m for m in twin.module_.layers if isinstance(m, torch.nn.Linear)]
    assert [layer.out_features for layer in float_layers] == [5, 3, 2]  # fit_benchmark's float twin too
    int_weights = [layer.quant_weight().int() for layer in layers]
    assert int(int_weights[-1].abs().max()) <= 4  # 3-bit signed: -4 to 3
    assert int(int_weights[0].abs().max()) > 4  # the hidden layers keep 6 bits
    assert np.mean(clf.predict(X, fhe="simulate") == clf.predict(X)) >= 0.9  # 0.975 to 1 over random_state 0-7


def test_a_qatmlp_subclass_gets_its_sizes_from_the_data(data):
    class Wider(QATMLP):
        pass

    X, y = data
    clf = NeuralNetClassifier(Wider, **SMALL).fit(X, y)
    assert isinstance(clf.module_, Wider)
    assert clf.module_.linear_layers[0].in_features == X.shape[1]
    assert clf.module_.linear_layers[-1].out_features == 2


@pytest.mark.parametrize("n_layers, hidden", [(2, [24]), (3, [24, 16]), (4, [24, 16, 16])])
def test_default_widths_widen_the_first_hidden_layer(data, n_layers, hidden):
    X, y = data
    clf, twin = NeuralNetClassifier(module__n_layers=n_layers, max_epochs=1).fit_benchmark(X, y)
    assert [layer.out_features for layer in clf.module_.linear_layers] == [*hidden, 2]
    assert [m.out_features for m in twin.module_.layers if isinstance(m, torch.nn.Linear)] == [*hidden, 2]


def test_per_layer_widths_must_match_the_layers(data):
    X, y = data
    with pytest.raises(ValueError, match="n_hidden gives 2 hidden widths for n_layers=2"):
        NeuralNetClassifier(**{**SMALL, "module__n_hidden": (5, 3)}).fit(X, y)


# "default" depends on the width of the data: 8 bits up to 2 features, 7 beyond
@pytest.mark.parametrize("rounding, n_features, kept", [("default", 4, [7, 7]), ("default", 2, [8, 8]),
                                                        ((8, 6), 4, [8, 6])], ids=str)
def test_rounding_bits_per_layer(data, rounding, n_features, kept):
    X, y = data
    X = X[:, :n_features]
    # unbinned: learned input bins would tabulate the 2-feature network, with no rounding left
    clf = NeuralNetClassifier(module__n_layers=3, module__n_hidden=4, max_epochs=2, random_state=0,
                              input_bins=None).fit(X, y)
    if rounding != "default":
        clf.compile(X, rounding_threshold_bits=rounding)
    else:
        assert clf.compile_settings_["rounding_threshold_bits"] == {"n_bits": kept[0], "method": "approximate"}
    lookups = [report for report in clf.quantized_module_.layer_reports() if report.table_lookups]
    assert [report.accumulator_bits - report.lsbs_removed for report in lookups] == kept
    assert all(report.accumulator_bits > 8 for report in lookups)  # both were rounded


def test_wide_data_default_is_one_hidden_layer_on_narrow_integers(data):
    X, y = data  # 4 features: beyond the 2 of learned input bins
    clf = NeuralNetClassifier(max_epochs=20, lr=0.05, batch_size=32, random_state=0).fit(X, y)
    assert [layer.out_features for layer in clf.module_.linear_layers] == [WIDE_NETWORK["n_hidden"], 2]
    assert [layer.quant_weight().bit_width.item() for layer in clf.module_.linear_layers] == [4, 3]
    assert clf.module_.layers[0].act_quant.bit_width().item() == 6  # input features
    assert clf.optimizer_.param_groups[0]["weight_decay"] == WIDE_WEIGHT_DECAY
    cost = clf.fhe_cost_
    # one 7-bit lookup per hidden neuron at most (a neuron whose output weights round to 0 is dropped),
    # on keys of one decomposition level
    assert cost.lookup_bit_widths == ((7, cost.programmable_bootstraps),) and cost.programmable_bootstraps <= 16
    assert [levels for (_, _, _, levels), _ in cost.bootstrap_keys] == [1]
    assert clf.score(X, y) > 0.8
    # approximate rounding's and p_error's mistakes move few decisions
    assert np.mean(clf.predict(X, fhe="simulate") == clf.predict(X)) >= 0.9


@pytest.mark.parametrize("module_params, hidden", [({"module__n_layers": 3}, [24, 16]),
                                                   ({"module__n_hidden": 5}, [5, 5]),
                                                   ({"module__n_layers": 2, "module__n_hidden": 7}, [7])], ids=str)
def test_wide_data_keeps_the_depth_or_widths_a_user_sets(data, module_params, hidden):
    X, y = data
    clf = NeuralNetClassifier(max_epochs=1, **module_params).fit(X, y)
    assert [layer.out_features for layer in clf.module_.linear_layers] == [*hidden, 2]
    assert clf.get_params()["module__n_layers"] == module_params.get("module__n_layers", 3)
    assert clf.optimizer_.param_groups[0]["weight_decay"] == 0


def test_wide_data_keeps_the_weight_decay_a_user_sets(data):
    X, y = data
    clf = NeuralNetClassifier(max_epochs=1, optimizer__weight_decay=0.0).fit(X, y)
    assert clf.optimizer_.param_groups[0]["weight_decay"] == 0
    assert [layer.out_features for layer in clf.module_.linear_layers] == [WIDE_NETWORK["n_hidden"], 2]


def test_regressor_learns_targets_in_their_units():
    X, y = make_regression(n_samples=200, n_features=3, noise=1.0, random_state=0)
    y = (5000 + 300 * y).astype(np.float32)  # far from the mean 0, variance 1 a network starts at
    params = dict(module__n_hidden=8, max_epochs=15, lr=0.05, batch_size=32, random_state=0)
    reg = NeuralNetRegressor(**params).fit(X, y)
    assert reg.target_mean_ == pytest.approx([y.mean()], rel=1e-5)
    assert reg.target_scale_ == pytest.approx([y.std()], rel=1e-5)
    assert reg.score(X, y) > 0.8
    for fhe in ("disable", "simulate"):
        assert abs(reg.predict(X, fhe=fhe).mean() - y.mean()) < 0.1 * y.std()
    # the same network (without the ridge term, which starts at the mean) on y as given does not even reach it
    raw = NeuralNetRegressor(**params, normalize_y=False, module__linear_term=False).fit(X, y)
    assert raw.score(X, y) < 0


def test_validation_split_and_early_stopping_restore_pruned_weights(data):
    X, y = data
    early = EarlyStopping(patience=2, load_best=True)
    clf = NeuralNetClassifier(**{**SMALL, "max_epochs": 30, "module__max_non_zero": 2},
                              train_split=ValidSplit(0.25, random_state=0), callbacks=[("early", early)],
                              random_state=0)
    clf.fit(X, y)
    # valid_acc scores the network being trained: predict has no circuit until fit ends
    assert all(0 <= acc <= 1 for acc in clf.history[:, "valid_acc"])
    # what EarlyStopping guarantees (threshold_mode "rel"): the best epoch's loss beat every
    # earlier one, and no later epoch beat it by more than the threshold, so it may not be
    # the very minimum (a later loss lower by less than 1e-4 of it does not count)
    losses = clf.history[:, "valid_loss"]
    best = losses[early.best_epoch_ - 1]
    assert all(best < loss for loss in losses[:early.best_epoch_ - 1])
    assert min(losses) >= best * (1 - early.threshold)
    assert len(losses) == clf.max_epochs or len(losses) - early.best_epoch_ == early.patience
    for layer in clf.module_.linear_layers:  # the restored weights are the pruned ones
        if layer.in_features > 2:
            assert int((layer.weight != 0).sum(dim=1).max()) <= 2
