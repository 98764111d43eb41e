"""scale_inputs: each feature is standardized in the clear before the network reads it."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from fheestimators.deployment.clientside import ClientModel
from fheestimators.sklearn import NeuralNetClassifier

SMALL = dict(module__n_layers=1, module__n_hidden=4, max_epochs=4, lr=0.05, batch_size=32, random_state=0)
# features a thousand times larger or smaller than others, by powers of two (exact in floating point)
SCALES = 2.0 ** np.array([-10, 0, 10, 3, -3, 7])


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=200, n_features=6, n_informative=4, n_redundant=0, random_state=0)
    return X.astype(np.float32), y


def test_a_feature_s_scale_does_not_change_the_model(data):
    X, y = data
    model = NeuralNetClassifier(**SMALL).fit(X, y)
    rescaled = NeuralNetClassifier(**SMALL).fit(X * SCALES, y)
    np.testing.assert_allclose(rescaled.input_scaler_.scale_, model.input_scaler_.scale_ * SCALES, rtol=1e-6)
    # the network reads the same standardized values: the same weights, circuit and predictions
    np.testing.assert_array_equal(rescaled.predict_proba(X * SCALES), model.predict_proba(X))
    np.testing.assert_array_equal(rescaled.predict(X[:20] * SCALES, fhe="simulate"),
                                  model.predict(X[:20], fhe="simulate"))


def test_the_network_reads_standardized_values_and_so_does_a_client(data):
    X, y = data
    model = NeuralNetClassifier(**SMALL).fit(X * SCALES, y)
    standardized = model.input_scaler_.transform(X * SCALES)
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_array_equal(model.quantized_module_.forward(standardized.astype(np.float32)),
                                  model._fhe_forward(X * SCALES, "disable"))
    assert model.input_transform_ is model.input_scaler_
    client = ClientModel.from_model(model)
    np.testing.assert_allclose(client.prepare(X * SCALES), standardized, rtol=1e-6)


def test_scale_inputs_false_feeds_the_values_as_they_are(data):
    X, y = data
    model = NeuralNetClassifier(**SMALL, scale_inputs=False).fit(X, y)
    assert model.input_scaler_ is None and model.input_transform_ is None
    np.testing.assert_array_equal(model.quantized_module_.forward(X), model._fhe_forward(X, "disable"))


def test_bins_are_not_scaled():
    rng = np.random.default_rng(0)
    X = rng.random((300, 2)).astype(np.float32) * [1000.0, 0.001]
    model = NeuralNetClassifier(**SMALL).fit(X, X[:, 0] / 1000 > X[:, 1] / 0.001)
    assert model.input_binning_ is not None and model.input_scaler_ is None
    assert model.input_transform_ is model.input_binning_


def test_a_model_saved_before_scaling_existed_loads_unscaled(data):
    X, y = data
    model = NeuralNetClassifier(**SMALL, scale_inputs=False).fit(X, y)
    state = model.__getstate__()
    for key in ("scale_inputs", "input_scaler_"):  # what such a file lacks
        del state[key]
    old = NeuralNetClassifier.__new__(NeuralNetClassifier)
    old.__setstate__(state)
    assert old.get_params()["scale_inputs"] is False
    np.testing.assert_array_equal(old.predict_proba(X), model.predict_proba(X))


def test_a_client_scales_a_data_frame_without_warnings(data):
    X, y = data
    frame = pd.DataFrame(X * SCALES, columns=[f"f{i}" for i in range(X.shape[1])])
    model = NeuralNetClassifier(**SMALL).fit(frame, y)
    client = ClientModel.from_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns when a scaler fitted on arrays gets named columns
        prepared = client.prepare(frame.iloc[:10])
    np.testing.assert_allclose(prepared, model.input_scaler_.transform((X * SCALES)[:10]), rtol=1e-6)
