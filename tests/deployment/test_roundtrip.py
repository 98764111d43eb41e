"""save -> Client / Server in one process: encrypted results equal predict, bad bytes refused."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from fheestimators import NeuralNetRegressor, compile_torch_model
from fheestimators.deployment import Client, PayloadError, Server, save

from deploy_models import SMALL, two_feature_data


@pytest.fixture(scope="module")
def client(saved_classifier, tmp_path_factory):
    client = Client(saved_classifier, key_dir=tmp_path_factory.mktemp("keys"))
    client.keygen()
    return client


@pytest.fixture(scope="module")
def server(saved_classifier):
    return Server(saved_classifier)


def test_classifier_round_trip_equals_predict(classifier, client, server, rows):
    result = server.run(client.encrypt(rows), client.evaluation_keys())
    np.testing.assert_array_equal(client.decrypt(result), classifier.predict(rows))
    np.testing.assert_allclose(client.decrypt_proba(result), classifier.predict_proba(rows))
    assert client.decrypt(result).dtype.kind == "U"  # the string labels, not their indices


def test_inputs_beyond_the_training_range_are_clipped_like_predict(classifier, client, rows):
    far = rows[-2:]
    np.testing.assert_array_equal(client.model.quantize(far)[0], classifier.quantized_module_.quantize_input(far))


def test_keys_are_reloaded_from_key_dir(saved_classifier, client, server, rows):
    again = Client(saved_classifier, key_dir=client.key_dir)
    # the second client decrypts what the first encrypted: the same secret key
    np.testing.assert_array_equal(again.decrypt(server.run(client.encrypt(rows[:2]), client.evaluation_keys())),
                                  client.decrypt(server.run(client.encrypt(rows[:2]), client.evaluation_keys())))
    assert again.evaluation_keys() == client.evaluation_keys()


def test_a_regressor_round_trip(tmp_path):
    X, _ = two_feature_data()
    y = X[:, 0] - 2 * X[:, 1]
    reg = NeuralNetRegressor(**SMALL).fit(X, y)
    client, server = Client(save(reg, tmp_path)), Server(tmp_path)
    predictions = client.decrypt(server.run(client.encrypt(X[:4]), client.evaluation_keys()))
    assert predictions.shape == (4,)
    np.testing.assert_allclose(predictions, reg.predict(X[:4]))


def test_a_torch_module_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid())
    X = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    module = compile_torch_model(model, X, n_bits=3, rounding_threshold_bits={"n_bits": 4, "method": "exact"},
                                 p_error=1e-9)
    client, server = Client(save(module, tmp_path)), Server(tmp_path)
    outputs = client.decrypt(server.run(client.encrypt(X[:3]), client.evaluation_keys()))
    np.testing.assert_allclose(outputs, module.forward(X[:3]))  # the Sigmoid runs on the client


def test_artefacts_hold_no_training_data(classifier, saved_classifier):
    X, _ = two_feature_data()
    for name in ("client.zip", "server.zip"):
        blob = (saved_classifier / name).read_bytes()
        if name == "server.zip":  # concrete-python's zip, with our header added
            with zipfile.ZipFile(saved_classifier / name) as archive:
                blob = b"".join(archive.read(info) for info in archive.infolist())
        for row in X[:50]:
            assert row.tobytes() not in blob and row.astype(np.float64).tobytes() not in blob


def test_client_checks_its_inputs(client):
    with pytest.raises(ValueError, match="shape"):
        client.encrypt(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        client.encrypt(np.array([[np.nan, 0.0]]))


def test_server_refuses_bytes_that_are_not_its_model_s(client, server, rows):
    payload, keys = client.encrypt(rows[:1]), client.evaluation_keys()
    with pytest.raises(PayloadError, match="not a inputs container|damaged"):
        server.run(payload[: len(payload) // 2], keys)
    with pytest.raises(PayloadError, match="expected a inputs container"):
        server.run(keys, keys)
    with pytest.raises(PayloadError, match="evaluation_keys"):
        server.run(payload, payload)
    with pytest.raises(PayloadError, match="empty"):
        server.run(b"", keys)
    # a payload re-tagged for another model: FHE could not tell, the header does
    forged = payload.replace(client.fingerprint.encode(), b"0" * len(client.fingerprint), 1)  # in the header
    with pytest.raises(PayloadError, match="made for model 000000000000"):
        server.run(forged, keys)


def test_save_refuses_what_it_cannot_deploy(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        save(NeuralNetRegressor(), tmp_path)
    with pytest.raises(TypeError, match="QuantizedModule"):
        save(object(), tmp_path)
