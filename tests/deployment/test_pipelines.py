"""Whole pipelines deploy: the client runs the preprocessing in the clear, the server the circuit."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
import skops.io
import torch
from deploy_models import SMALL, two_feature_data
from serving import Service
from sklearn.compose import ColumnTransformer
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, OneHotEncoder, StandardScaler

from fheestimators import NeuralNetClassifier, compile_torch_model
from fheestimators.deployment import Client, PayloadError, RemoteModel, Server, fingerprint, save
from fheestimators.deployment import container, preprocessing
from fheestimators.deployment.artifacts import CLIENT_FILE, model_fingerprint
from fheestimators.deployment.clientside import ClientModel


def table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Two numeric columns and a categorical one, each with missing values."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"size": rng.random(n), "weight": rng.random(n) * 50,
                          "colour": rng.choice(["red", "green", "blue"], n)})
    y = np.where(frame["size"] + 0.4 * (frame["colour"] == "red") > frame["weight"] / 50, "yes", "no")
    frame.loc[rng.random(n) < 0.1, "size"] = np.nan
    frame.loc[rng.random(n) < 0.1, "colour"] = None
    return frame, y


def tabular_pipeline():
    columns = ColumnTransformer([
        ("size", make_pipeline(SimpleImputer(), StandardScaler()), ["size"]),
        ("weight", MinMaxScaler(), ["weight"]),
        ("colour", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["colour"]),
    ])
    return make_pipeline(columns, NeuralNetClassifier(**SMALL))


@pytest.fixture(scope="module")
def pipeline():
    return tabular_pipeline().fit(*table(300, seed=0))


@pytest.fixture(scope="module")
def folder(pipeline, tmp_path_factory):
    return save(pipeline, tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    """Rows with a missing number, a missing category and a category never seen, columns reordered."""
    frame, _ = table(3, seed=1)
    frame.loc[0, "size"] = np.nan
    frame.loc[1, "colour"] = None
    frame.loc[2, "colour"] = "purple"
    return frame[["colour", "weight", "size"]]


@pytest.fixture(scope="module")
def client(folder, tmp_path_factory):
    client = Client(folder, key_dir=tmp_path_factory.mktemp("keys"), fingerprint=fingerprint(folder))
    client.keygen()
    return client


def test_client_and_server_give_what_the_pipeline_gives(pipeline, folder, client, test_rows):
    result = Server(folder).run(client.encrypt(test_rows), client.evaluation_keys())
    assert list(client.decrypt(result)) == list(pipeline.predict(test_rows))
    np.testing.assert_allclose(client.decrypt_proba(result), pipeline.predict_proba(test_rows), rtol=1e-6)


def test_the_client_artefact_carries_the_preprocessing_not_the_server_one(pipeline, folder, client):
    assert client.model.feature_names == ["size", "weight", "colour"]
    assert list(client.model.classes) == ["no", "yes"]
    steps = preprocessing.describe(client.model.preprocessing)
    assert {"ColumnTransformer", "SimpleImputer", "StandardScaler", "MinMaxScaler", "OneHotEncoder"} <= set(steps)
    # what `fheestimators info` shows: the structure, not every container on the way
    assert preprocessing.outline(client.model.preprocessing).startswith(
        "ColumnTransformer(size: SimpleImputer → StandardScaler; weight: MinMaxScaler; "
        "colour: SimpleImputer → OneHotEncoder)")
    assert b"OneHotEncoder" not in (folder / "server.zip").read_bytes()


def test_the_columns_are_checked_by_name(client, test_rows):
    with pytest.raises(ValueError, match="missing column\\(s\\) 'size'"):
        client.encrypt(test_rows.drop(columns="size"))
    with pytest.raises(ValueError, match="unexpected column\\(s\\) 'height'"):
        client.encrypt(test_rows.assign(height=1.0))
    with pytest.raises(TypeError, match="fitted on a pandas DataFrame"):
        client.encrypt(test_rows[["size", "weight", "colour"]].to_numpy())


@pytest.fixture(scope="module")
def service(folder, tmp_path_factory):
    with Service.in_tmp(folder, tmp_path_factory, "pipeline").start("--workers", "1").wait_ready() as service:
        yield service


def test_a_remote_model_gives_what_the_pipeline_gives(pipeline, folder, client, service, test_rows):
    with RemoteModel(service.url, key_dir=client.key_dir, fingerprint=fingerprint(folder)) as remote:
        assert list(remote.predict(test_rows)) == list(pipeline.predict(test_rows))
        np.testing.assert_allclose(remote.predict_proba(test_rows), pipeline.predict_proba(test_rows), rtol=1e-6)


def test_a_pipeline_fitted_on_arrays_takes_arrays(tmp_path):
    X, y = two_feature_data()
    pipeline = make_pipeline(MinMaxScaler(), NeuralNetClassifier(**SMALL)).fit(X * 100, (y == "above") * 7)
    client = Client(save(pipeline, tmp_path))
    rows = two_feature_data(4, seed=2)[0] * 100
    result = Server(tmp_path).run(client.encrypt(rows), client.evaluation_keys())
    assert client.decrypt(result).tolist() == pipeline.predict(rows).tolist()  # labels 0 and 7
    assert client.model.feature_names is None


@pytest.mark.parametrize("step, reason", [
    (FunctionTransformer(np.log1p), "FunctionTransformer.*code every client runs"),
    (KNNImputer(), "KNNImputer.*training rows"),
])
def test_untrusted_steps_are_refused_at_save(step, reason, tmp_path):
    X, y = two_feature_data()
    pipeline = make_pipeline(step, NeuralNetClassifier(**SMALL)).fit(X, y)
    with pytest.raises(TypeError, match=reason):
        save(pipeline, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_column_selected_by_a_function_is_refused():
    X, _ = table(20, seed=0)
    columns = ColumnTransformer([("n", StandardScaler(), lambda frame: ["weight"])]).fit(X)
    with pytest.raises(TypeError, match="function selecting columns"):
        preprocessing.check_trusted(columns)


def test_unfitted_and_foreign_pipelines_are_refused_with_the_true_reason(tmp_path):
    with pytest.raises(ValueError, match="StandardScaler is not fitted"):
        save(make_pipeline(StandardScaler(), NeuralNetClassifier(**SMALL)), tmp_path)
    X, y = two_feature_data()
    with pytest.raises(TypeError, match="Pipeline ending with one; got LogisticRegression"):
        save(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), tmp_path)


def _with_preprocessing(folder, new: bytes, refingerprint: bool) -> bytes:
    header, members = container.unpack((folder / CLIENT_FILE).read_bytes(), "client")
    members[preprocessing.MEMBER] = new
    model_id = model_fingerprint(header["circuit_digest"], members) if refingerprint else header["fingerprint"]
    header = {key: value for key, value in header.items() if key not in ("kind", "fingerprint", "format")}
    return container.pack("client", model_id, members, **header)


def test_altered_preprocessing_is_refused(pipeline, folder):
    other = make_pipeline(tabular_pipeline()[0]).fit(table(300, seed=5)[0])  # another scaler, same shape
    forged = skops.io.dumps(other[0])
    with pytest.raises(PayloadError, match="altered after save"):
        Client(_with_preprocessing(folder, forged, refingerprint=False))
    # a forger who also rewrites the fingerprint makes another model, which a pinned client refuses
    with pytest.raises(PayloadError, match="not the pinned model"):
        Client(_with_preprocessing(folder, forged, refingerprint=True), fingerprint=fingerprint(folder))


def test_preprocessing_bytes_are_read_defensively():
    scaler = StandardScaler().fit([[0.0], [1.0]])
    data = skops.io.dumps(scaler)
    assert preprocessing.loads(data).scale_[0] == pytest.approx(0.5)
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info))
    with pytest.raises(PayloadError, match="compressed or oversized"):
        preprocessing.loads(deflated.getvalue())
    with pytest.raises(PayloadError, match="not trusted|cannot be deployed"):
        preprocessing.loads(skops.io.dumps(FunctionTransformer(np.log1p).fit([[1.0]])))
    with pytest.raises(PayloadError, match="not skops data"):
        preprocessing.loads(b"not a zip")


def test_a_compiled_module_behind_a_scaler_gets_its_scaled_rows():
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(5, 3, (200, 3)).astype(np.float32)
    scaler = StandardScaler().fit(X)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    module = compile_torch_model(net, scaler.transform(X).astype(np.float32), n_bits=3, p_error=1e-9)
    client_model = ClientModel.from_bytes(ClientModel.from_model(make_pipeline(scaler, module)).to_bytes())
    (quantized,) = client_model.quantize(X[:5])
    np.testing.assert_array_equal(quantized, module.quantize_input(scaler.transform(X[:5]).astype(np.float32)))


def test_the_classifier_s_learned_bins_run_on_the_client(tmp_path):
    X, y = two_feature_data()
    # 3-bit inputs: 4 bins each; p_error 1e-6 (10 lookups here: a mistake has probability below 1e-5)
    model = NeuralNetClassifier(**{**SMALL, "input_bins": "auto", "p_error": 1e-6}).fit(X, y)
    client = Client(save(model, tmp_path))
    assert preprocessing.describe(client.model.preprocessing) == ["KBinsDiscretizer"]
    rows = np.vstack([two_feature_data(4, seed=3)[0], [[-5.0, 5.0]]])
    result = Server(tmp_path).run(client.encrypt(rows), client.evaluation_keys())
    assert client.decrypt(result).tolist() == model.predict(rows).tolist()
    np.testing.assert_allclose(client.decrypt_proba(result), model.predict_proba(rows), rtol=1e-6)
