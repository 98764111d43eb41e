"""The HTTP service in real processes: ``fheestimators serve`` on 127.0.0.1, ``RemoteModel`` as client.

One service (two evaluator processes) runs for the whole module and is restarted once;
keys are generated once per client folder. Every refused request is followed by a
health check and a correct prediction: no bad input may take the service down or touch
the stored keys.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fheestimators.deployment import Client, PayloadError, RemoteError, RemoteModel, Server, cli, container
from fheestimators.deployment import fingerprint as fingerprint_of
from fheestimators.deployment.service import Limits, create_app
from fheestimators.deployment.service.keystore import CLIENT_ID, KeyStore

from serving import UNPENALIZED, Service, served

TIMEOUT = 120.0


def _retag(data: bytes, kind: str, fingerprint: str) -> bytes:
    """The container re-labelled for the model ``fingerprint``: a client lying about its model."""
    header, members = container.unpack(data, kind, max_bytes=1 << 30)
    fields = {k: v for k, v in header.items() if k not in ("format", "kind", "fingerprint")}
    return container.pack(kind, fingerprint, members, **fields)


def _store_state(key_store: Path) -> dict:
    """Every file and folder of the key store but the spool of bodies being uploaded.

    Files by size and inode (they are replaced, never rewritten), not by time: using keys
    touches them, for the store's expiry of unused ones.
    """
    return {str(p.relative_to(key_store)): (p.stat().st_size, p.stat().st_ino) if p.is_file() else "folder"
            for p in key_store.rglob("*") if ".incoming" not in p.parts}


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def key_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("key_store")


@pytest.fixture(scope="module")
def service(saved_classifier, key_store, tmp_path_factory):
    """Started here, waited for in ``url``: it boots while the client keys are generated."""
    service = Service(saved_classifier, key_store, tmp_path_factory.mktemp("log") / "service.log")
    with service.start("--workers", "2", *UNPENALIZED) as service:
        yield service


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
def pin(saved_classifier) -> str:
    """The model's fingerprint, as its developer hands it to users out of band."""
    return fingerprint_of(saved_classifier)


@pytest.fixture(scope="module")
def remote(url, key_dirs, remotes, pin) -> RemoteModel:
    """The first client: only the fingerprint given, so it downloads the service's artefact."""
    model = RemoteModel(url, key_dir=key_dirs[0], timeout=TIMEOUT, fingerprint=pin)
    remotes.append(model)
    return model


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
    service.start("--workers", "1", *UNPENALIZED).wait_ready()
    again = RemoteModel(service.url, key_dir=key_dirs[0], timeout=TIMEOUT, fingerprint=remote.client.fingerprint)
    remotes.append(again)
    np.testing.assert_array_equal(again.predict(rows[-1:]), classifier.predict(rows[-1:]))
    assert again.uploads == 0 and again.client_id == remote.client_id


def test_keys_are_uploaded_again_when_the_service_lost_them(url, classifier, rows, key_dirs, remotes, pin):
    registration = key_dirs[3] / "remote.json"
    fingerprint = httpx.get(f"{url}/health").json()["fingerprint"]
    # a registration the service never made, as after its key store was wiped
    registration.write_text(json.dumps({"url": url, "fingerprint": fingerprint,
                                        "client_id": "A" * 22, "token": "t" * 43}))
    model = RemoteModel(url, key_dir=key_dirs[3], timeout=TIMEOUT, fingerprint=pin)
    remotes.append(model)
    np.testing.assert_array_equal(model.predict(rows[:1]), classifier.predict(rows[:1]))
    assert model.uploads == 1 and model.client_id != "A" * 22


def test_concurrent_requests_of_several_clients(url, remote, classifier, rows, key_dirs, remotes):
    models = [remote]
    for folder in key_dirs[1:]:
        models.append(RemoteModel(url, key_dir=folder, timeout=TIMEOUT, fingerprint=remote.client.fingerprint))
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

    before = served(url)
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(requests, range(8)))
    assert done == [[(3 * t + j) % len(rows) for j in range(3)] for t in range(8)]
    assert served(url) - before == 24  # the service counted each as a success: none was retried
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
            "/keys", _retag(env.foreign.keys, "evaluation_keys", fingerprint), {}, 400, "bytes where"),
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
        predict_limit=Limits().max_samples * sum(header["input_bytes"]) + (1 << 20),
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
    clients = [p for p in key_store.iterdir() if CLIENT_ID.fullmatch(p.name)]
    assert len(clients) == sum(m.uploads for m in remotes)
    assert sorted(p.name for p in key_store.iterdir() if p not in clients) == [".incoming", "quarantine"]
    assert not [p for p in key_store.rglob(".*") if p.name != ".incoming"]  # no temporary file left behind
    assert not list((key_store / ".incoming").iterdir())


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
    with TestClient(create_app(saved_classifier, key_store=tmp_path, api_token="s3cret",
                               limits=Limits(workers=1))) as app:
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
        store.check(client_id, token[:-1] + ("B" if token.endswith("A") else "A"))  # always another token
    with pytest.raises(LookupError, match="this service runs"):
        store.check(client_id, token, "0" * 64)


def test_serve_refuses_a_folder_without_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", str(tmp_path)])
    assert exit_.value.code == 2
    assert "not a saved model folder" in capsys.readouterr().err
