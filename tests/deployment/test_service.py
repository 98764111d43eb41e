"""The HTTP service in real processes: ``fheestimators serve`` on 127.0.0.1, ``RemoteModel`` as client.

One service (two uvicorn workers) runs for the whole module and is restarted once;
keys are generated once per client folder. Every refused request is followed by a
health check and a correct prediction: no bad input may take a worker down or touch
the stored keys.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fheestimators import NeuralNetClassifier
from fheestimators.deployment import Client, PayloadError, RemoteError, RemoteModel, Server, cli, container, save
from fheestimators.deployment.keystore import CLIENT_ID, KeyStore
from fheestimators.deployment.service import create_app

from deploy_models import SMALL

SERVE = [sys.executable, "-m", "fheestimators.deployment", "serve"]
TIMEOUT = 120.0


class Service:
    """``fheestimators serve`` in a process group of its own, restartable on the same port."""

    def __init__(self, folder: Path, key_store: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [*SERVE, str(folder), "--port", str(self.port), "--key-store", str(key_store)]
        self.process = None

    def start(self, *options: str) -> "Service":
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHEESTIMATORS_")}
        with open(self.log, "ab") as log:
            # a session of its own: the workers are killed with it
            self.process = subprocess.Popen([*self.command, *options], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 240.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the service exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"the service did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _retag(data: bytes, kind: str, fingerprint: str) -> bytes:
    """The container re-labelled for the model ``fingerprint``: a client lying about its model."""
    header, members = container.unpack(data, kind, max_bytes=1 << 30)
    fields = {k: v for k, v in header.items() if k not in ("format", "kind", "fingerprint")}
    return container.pack(kind, fingerprint, members, **fields)


def _store_state(key_store: Path) -> dict:
    return {str(p.relative_to(key_store)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in key_store.rglob("*")}


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def key_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("key_store")


@pytest.fixture(scope="module")
def service(saved_classifier, key_store, tmp_path_factory):
    """Started here, waited for in ``url``: it boots while the client keys are generated."""
    service = Service(saved_classifier, key_store, tmp_path_factory.mktemp("log") / "service.log")
    service.start("--workers", "2")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def key_dirs(saved_classifier, tmp_path_factory) -> list[Path]:
    """Four clients' key folders with their keys: keygen is the slow part of a client."""
    dirs = [tmp_path_factory.mktemp(f"client{i}") for i in range(4)]
    for folder in dirs:
        Client(saved_classifier, key_dir=folder).keygen()
    return dirs


@pytest.fixture(scope="module")
def url(service, key_dirs) -> str:
    return service.wait_ready().url


@pytest.fixture(scope="module")
def remotes():
    """Every RemoteModel of the module, to count the legitimate uploads."""
    made: list[RemoteModel] = []
    yield made
    for model in made:
        model.close()


@pytest.fixture(scope="module")
def remote(url, key_dirs, remotes) -> RemoteModel:
    """The first client: no artefact given, so it downloads the service's."""
    model = RemoteModel(url, key_dir=key_dirs[0], timeout=TIMEOUT)
    remotes.append(model)
    return model


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Another model (3 features, 3 neurons): its ciphertexts and evaluation keys.

    ``p_error=0.3`` keeps its keys smaller than the service's body limit for ours, so that
    they reach the model checks instead of being refused for their size.
    """
    rng = np.random.default_rng(0)
    X = rng.random((200, 3)).astype(np.float32)
    model = NeuralNetClassifier(**{**SMALL, "module__n_hidden": 3, "p_error": 0.3}).fit(
        X, np.where(X.sum(axis=1) > 1.5, "high", "low"))
    folder = save(model, tmp_path_factory.mktemp("foreign"))
    client = Client(folder)
    return SimpleNamespace(folder=folder, keys=client.evaluation_keys(), payload=client.encrypt(X[:1]))


# ---------------------------------------------------------------- predictions

def test_remote_predictions_equal_local_ones(remote, classifier, rows, key_dirs):
    np.testing.assert_array_equal(remote.predict(rows), classifier.predict(rows))
    np.testing.assert_allclose(remote.predict_proba(rows), classifier.predict_proba(rows))
    assert remote.uploads == 1
    assert (key_dirs[0] / "client.zip").is_file()  # downloaded, kept for next time
    registration = key_dirs[0] / "remote.json"
    assert stat.S_IMODE(registration.stat().st_mode) == 0o600  # it holds the client's token
    assert json.loads(registration.read_text())["client_id"] == remote.client_id


def test_a_restarted_service_keeps_the_uploaded_keys(service, remote, classifier, rows, key_dirs, remotes):
    remote._register_once()  # registered before the restart, also when this test runs alone
    service.stop(signal.SIGKILL)
    # one worker now: the store, not the worker layout, must carry the clients (and it boots faster)
    service.start("--workers", "1").wait_ready()
    again = RemoteModel(service.url, key_dir=key_dirs[0], timeout=TIMEOUT)
    remotes.append(again)
    np.testing.assert_array_equal(again.predict(rows[-1:]), classifier.predict(rows[-1:]))
    assert again.uploads == 0 and again.client_id == remote.client_id


def test_keys_are_uploaded_again_when_the_service_lost_them(url, classifier, rows, key_dirs, remotes):
    registration = key_dirs[3] / "remote.json"
    fingerprint = httpx.get(f"{url}/health").json()["fingerprint"]
    # a registration the service never made, as after its key store was wiped
    registration.write_text(json.dumps({"url": url, "fingerprint": fingerprint,
                                        "client_id": "A" * 22, "token": "t" * 43}))
    model = RemoteModel(url, key_dir=key_dirs[3], timeout=TIMEOUT)
    remotes.append(model)
    np.testing.assert_array_equal(model.predict(rows[:1]), classifier.predict(rows[:1]))
    assert model.uploads == 1 and model.client_id != "A" * 22


def test_concurrent_requests_of_several_clients(url, remote, classifier, rows, key_dirs, remotes):
    models = [remote]
    for folder in key_dirs[1:]:
        models.append(RemoteModel(url, key_dir=folder, timeout=TIMEOUT))
        remotes.append(models[-1])
    expected = classifier.predict_proba(rows)

    def requests(thread: int) -> list[int]:
        model, done = models[thread % len(models)], []
        for j in range(3):
            i = (3 * thread + j) % len(rows)
            # probabilities, not labels: keys of another client would decrypt to noise
            np.testing.assert_allclose(model.predict_proba(rows[i : i + 1]), expected[i : i + 1])
            done.append(i)
        return done

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(requests, range(8)))
    assert sum(len(d) for d in done) == 24
    assert len({m.client_id for m in models}) == 4


# ---------------------------------------------------------------- refusals

BAD_REQUESTS = [
    "truncated ciphertext", "random bytes", "ciphertext of another model", "wrong number of features",
    "empty body", "oversized body", "oversized chunked body", "unknown client", "not a client id",
    "wrong token", "no token", "evaluation keys of another model",
    "evaluation keys of another model, relabelled", "garbage keys", "empty keys", "oversized keys"]


def _case(env, name: str) -> tuple:
    """The bad request ``name``: (path, body, headers, status, words the detail must contain)."""
    predict, auth, payload, fingerprint = env.predict_path, env.auth, env.payload, env.remote.fingerprint
    too_big = env.predict_limit + 1000
    cases = {  # built on demand: some bodies are tens of MB
        "truncated ciphertext": lambda: (predict, payload[: len(payload) // 2], auth, 400, "inputs container"),
        "random bytes": lambda: (predict, os.urandom(len(payload)), auth, 400, "not a inputs container"),
        "ciphertext of another model": lambda: (predict, env.foreign.payload, auth, 400, "made for model"),
        # the 3-feature model's ciphertext claiming to be ours: its size gives it away
        "wrong number of features": lambda: (predict, _retag(env.foreign.payload, "inputs", fingerprint), auth, 400,
                                             "different number of features"),
        "empty body": lambda: (predict, b"", auth, 400, "body is empty"),
        "oversized body": lambda: (predict, os.urandom(too_big), auth, 413, "larger than"),
        # no Content-Length: the service must count what it reads
        "oversized chunked body": lambda: (predict, (os.urandom(100_000) for _ in range(too_big // 100_000 + 1)),
                                           auth, 413, "larger than"),
        "unknown client": lambda: ("/clients/" + "B" * 22 + "/predict", payload, auth, 404, "no client"),
        "not a client id": lambda: ("/clients/..%5C..%5Cetc/predict", payload, auth, 404, "not a client id"),
        "wrong token": lambda: (predict, payload, {"Authorization": "Bearer " + "x" * 43}, 401,
                                "wrong or missing token"),
        "no token": lambda: (predict, payload, {}, 401, "wrong or missing token"),
        "evaluation keys of another model": lambda: ("/keys", env.foreign.keys, {}, 400, "made for model"),
        # keys of another circuit can crash concrete-python: refused by their size first
        "evaluation keys of another model, relabelled": lambda: (
            "/keys", _retag(env.foreign.keys, "evaluation_keys", fingerprint), {}, 400, "where this model's have"),
        "garbage keys": lambda: ("/keys", os.urandom(4096), {}, 400, "not a evaluation_keys container"),
        "empty keys": lambda: ("/keys", b"", {}, 400, "body is empty"),
        "oversized keys": lambda: ("/keys", bytes(env.keys_limit + 1), {}, 413, "larger than"),
    }
    assert list(cases) == BAD_REQUESTS
    return cases[name]()


@pytest.fixture(scope="module")
def env(remote, foreign, saved_classifier, rows):
    remote._register_once()  # also when a refusal test runs alone
    header = Server(saved_classifier).header
    return SimpleNamespace(
        remote=remote, foreign=foreign, payload=remote.client.encrypt(rows[:1]),
        predict_path=f"/clients/{remote.client_id}/predict", auth={"Authorization": f"Bearer {remote._client_token}"},
        predict_limit=1024 * sum(header["input_bytes"]) + (1 << 20),
        keys_limit=header["evaluation_keys_bytes"] + (1 << 20))


def test_the_foreign_keys_reach_the_model_checks(env):
    assert len(env.foreign.keys) < env.keys_limit  # else the refusals below would only test the size limit


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_are_refused_and_the_service_keeps_serving(case, env, url, service, key_store, classifier, rows):
    path, body, headers, status, words = _case(env, case)
    before = _store_state(key_store)
    response = httpx.post(url + path, content=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert _store_state(key_store) == before  # nothing stored, nothing changed
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["fingerprint"] == env.remote.fingerprint
    np.testing.assert_array_equal(env.remote.predict(rows[:1]), classifier.predict(rows[:1]))
    assert "died" not in service.log.read_text()  # no worker was replaced behind the health check


def test_remote_errors_carry_the_service_s_reason(url, env):
    with pytest.raises(RemoteError) as error:
        env.remote.run(env.payload[:100])
    assert error.value.status_code == 400 and "inputs container" in error.value.message
    # the wrong number of features never leaves the client
    with pytest.raises(ValueError, match="expected \\(n_samples, 2\\)"):
        env.remote.predict(np.zeros((1, 3), dtype=np.float32))


def test_a_client_artefact_of_another_model_is_refused(url, foreign, tmp_path):
    with pytest.raises(PayloadError, match="the service at .* runs"):
        RemoteModel(url, foreign.folder, key_dir=tmp_path)


def test_the_key_store_holds_one_client_per_upload(key_store, remotes):
    assert remotes, "run with the tests above"
    clients = [p for p in key_store.iterdir() if p.is_dir()]
    assert len(clients) == sum(m.uploads for m in remotes)
    assert all(CLIENT_ID.fullmatch(p.name) for p in clients)
    assert not [p for p in key_store.rglob(".*")]  # no temporary file left behind


def test_neither_the_service_nor_its_key_store_holds_a_secret_key(saved_classifier, key_store, key_dirs, remote):
    # ``remote``: the service has run with these keys before the folders are read
    client = Client(saved_classifier, key_dir=key_dirs[0])
    client.keygen()
    windows = _secret_key_windows(client)
    # the check finds the key where it is: it would fail if key_dir were inside the key store
    assert _holds_any(key_dirs[0], windows)
    assert not _holds_any(saved_classifier, windows)
    assert not _holds_any(key_store, windows)


def _secret_key_windows(client: Client, per_key: int = 4) -> list[bytes]:
    """Stretches of 64 coefficients of each LWE secret key, as concrete-python stores them.

    The coefficients are bits stored as 8-byte words, so 64 bytes hold only 8 bits of
    key and match ordinary data; 64 coefficients (512 bytes) do not.
    """
    windows = []
    for key in client._client.keys._keyset.get_client_keys().get_secret_keys():
        n = key.param.dimension()
        coefficients = key.serialize()[-8 * n :]
        assert set(np.frombuffer(coefficients, dtype=np.uint64)) == {0, 1}
        for start in np.linspace(0, n - 64, per_key).astype(int):
            windows.append(coefficients[8 * start : 8 * (start + 64)])
    return windows


def _holds_any(folder: Path, windows: list[bytes]) -> bool:
    """Whether a file under ``folder``, or a member of a zip there, contains one of ``windows``."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs += [archive.read(info) for info in archive.infolist()]
        if any(window in blob for blob in blobs for window in windows):
            return True
    return False


# ---------------------------------------------------------------- in process

def test_a_client_artefact_of_another_format_version_is_refused(saved_classifier):
    header, members = container.unpack((saved_classifier / "client.zip").read_bytes(), "client")
    fields = {k: v for k, v in header.items() if k not in ("kind", "fingerprint")}
    old = container.pack("client", header["fingerprint"], members, **{**fields, "format": 99})
    with pytest.raises(PayloadError, match="format version 99"):
        Client(old)


def test_the_server_refuses_a_client_artefact_of_another_model(saved_classifier):
    with pytest.raises(PayloadError, match="client artefact is for model 000000000000.*use the client.zip"):
        Server(saved_classifier).check_client("0" * 64)


def test_key_uploads_need_the_api_token_when_one_is_set(saved_classifier, key_dirs, tmp_path):
    keys = Client(saved_classifier, key_dir=key_dirs[0]).evaluation_keys()
    app = TestClient(create_app(saved_classifier, key_store=tmp_path, api_token="s3cret"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response = app.post("/keys", content=keys, headers=headers)
        assert response.status_code == 401 and "API token" in response.json()["detail"]
    assert KeyStore(tmp_path).client_ids() == []
    created = app.post("/keys", content=keys, headers={"Authorization": "Bearer s3cret"})
    assert created.status_code == 201
    assert KeyStore(tmp_path).client_ids() == [created.json()["client_id"]]


def test_the_key_store_refuses_unknown_ids_and_tokens(tmp_path):
    store = KeyStore(tmp_path)
    client_id, token = store.add("f" * 64, b"keys")
    assert store.check(client_id, token, "f" * 64).read_bytes() == b"keys"
    assert token not in "".join(p.read_text() for p in (tmp_path / client_id).iterdir())  # only its hash
    for bad_id in ("../" + client_id, client_id + "/..", "x" * 22, ""):
        with pytest.raises(LookupError):
            store.check(bad_id, token)
    with pytest.raises(PermissionError, match="wrong or missing token"):
        store.check(client_id, token[:-1] + "A")
    with pytest.raises(LookupError, match="this service runs"):
        store.check(client_id, token, "0" * 64)


def test_serve_refuses_a_folder_without_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", str(tmp_path)])
    assert exit_.value.code == 2
    assert "not a saved model folder" in capsys.readouterr().err
