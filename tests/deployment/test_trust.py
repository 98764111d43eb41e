"""Trusting a client artefact: its fingerprint is recomputed, can be pinned, and its encryption
parameters must reach 128-bit security; ``RemoteModel`` refuses to let the service choose them.

Forged artefacts are real ones rewritten: each test changes one thing, and re-fingerprints it
when only a later check is meant to refuse it. No key is generated except in the round trips.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Optional

import httpx
import numpy as np
import pytest
from concrete import fhe

from fheestimators.deployment import Client, PayloadError, RemoteModel, Server, container, fingerprint
from fheestimators.deployment import client as client_module
from fheestimators.deployment.artifacts import check_versions, model_fingerprint, versions
from fheestimators.deployment.security import min_log2_std

URL = "http://fake-service.invalid"
RESERVED = ("format", "kind", "fingerprint", "members")


# ---------------------------------------------------------------- helpers

def _client_zip(folder) -> bytes:
    return (folder / "client.zip").read_bytes()


def _rewritten(data: bytes, members: Optional[dict] = None, refingerprint: bool = False,
               fingerprint_: Optional[str] = None, **fields) -> bytes:
    """The client artefact with some members or header fields replaced.

    The header's fingerprint is kept unless ``refingerprint`` (recomputed, so that the
    artefact is sound and only later checks can refuse it) or ``fingerprint_`` is given.
    """
    header, old = container.unpack(data, "client", max_bytes=1 << 30)
    members = {**old, **(members or {})}
    fields = {**{k: v for k, v in header.items() if k not in RESERVED}, **fields}
    value = header["fingerprint"]
    if refingerprint:
        value = model_fingerprint(fields["circuit_digest"], members)
    if fingerprint_ is not None:
        value = fingerprint_
    return container.pack("client", value, members, **fields)


def _with_specs(data: bytes, edit: Callable[[dict], None]) -> bytes:
    """The artefact with its client specs (concrete's ProgramInfo as JSON) edited, re-fingerprinted."""
    _, members = container.unpack(data, "client", max_bytes=1 << 30)
    specs = json.loads(members["client.specs.json"])
    edit(specs)
    return _rewritten(data, {"client.specs.json": json.dumps(specs).encode()}, refingerprint=True)


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


@pytest.fixture
def no_parsing(monkeypatch):
    """Any parser of the members fails the test: the fingerprint must refuse first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a member was parsed before the fingerprint was checked")
    monkeypatch.setattr(client_module.ClientModel, "from_bytes", forbidden)
    monkeypatch.setattr(fhe.ClientSpecs, "deserialize", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(client_module, "check_security", forbidden)


@pytest.fixture
def no_keygen(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a key was generated")
    monkeypatch.setattr(fhe.Client, "keygen", forbidden)


@pytest.fixture(scope="module")
def pinned(saved_classifier) -> str:
    return fingerprint(saved_classifier)


@pytest.fixture(scope="module")
def pinned_client(saved_classifier, pinned, tmp_path_factory) -> Client:
    client = Client(saved_classifier, key_dir=tmp_path_factory.mktemp("trust-keys"), fingerprint=pinned)
    client.keygen()
    return client


@pytest.fixture(scope="module")
def server(saved_classifier):
    return Server(saved_classifier)


# ---------------------------------------------------------------- the fingerprint

def test_the_fingerprint_is_one_value_everywhere(saved_classifier, pinned, server):
    data = _client_zip(saved_classifier)
    header, _ = container.unpack(data, "client", max_bytes=1 << 30)
    assert re.fullmatch("[0-9a-f]{64}", pinned) and re.fullmatch("[0-9a-f]{64}", header["circuit_digest"])
    assert pinned == header["fingerprint"] == server.fingerprint == fingerprint(saved_classifier / "client.zip")
    assert fingerprint(data) == pinned


@pytest.mark.parametrize("member", ["client.specs.json", "model.json", "model.npz"])
def test_an_altered_member_is_refused_before_it_is_parsed(saved_classifier, pinned, member, no_parsing):
    data = _client_zip(saved_classifier)
    _, members = container.unpack(data, "client", max_bytes=1 << 30)
    altered = _rewritten(data, {member: _flip(members[member])})
    with pytest.raises(PayloadError, match="was altered") as error:
        Client(altered)
    assert pinned in str(error.value)  # both fingerprints named: the header's and the content's
    assert re.search("hashes to [0-9a-f]{64}", str(error.value))
    with pytest.raises(PayloadError, match="was altered"):
        fingerprint(altered)


def test_a_forged_header_is_refused(saved_classifier, no_parsing):
    data = _client_zip(saved_classifier)
    with pytest.raises(PayloadError, match=f"names model {'0' * 64}.*was altered"):
        Client(_rewritten(data, fingerprint_="0" * 64))
    with pytest.raises(PayloadError, match="was altered"):
        Client(_rewritten(data, circuit_digest="1" * 64))  # another circuit, claimed
    with pytest.raises(PayloadError, match="no valid circuit_digest"):
        Client(_rewritten(data, circuit_digest=None))  # as saved by an older fheestimators
    with pytest.raises(PayloadError, match="members save never writes"):
        Client(_rewritten(data, {"extra.bin": b"x"}))


def test_a_pinned_client_round_trip_equals_predict(pinned_client, classifier, server, rows):
    result = server.run(pinned_client.encrypt(rows), pinned_client.evaluation_keys())
    np.testing.assert_array_equal(pinned_client.decrypt(result), classifier.predict(rows))


def test_a_pin_of_another_model_is_refused(saved_classifier, pinned, no_keygen):
    other = _rewritten(_client_zip(saved_classifier), {"model.json": b'{"forged": 1}'}, refingerprint=True)
    with pytest.raises(PayloadError, match=f"not the pinned model {pinned}"):
        Client(other, fingerprint=pinned)
    with pytest.raises(PayloadError, match="not the pinned model 0000"):
        Client(saved_classifier, fingerprint="0" * 64)


# ---------------------------------------------------------------- security

def _tiny_lwe_key(specs: dict) -> None:
    """The small LWE key (757 here) cut to 64, with the keys that use it kept consistent."""
    keyset = specs["keyset"]
    small = min(keyset["lweSecretKeys"], key=lambda key: key["params"]["lweDimension"])
    small["params"]["lweDimension"] = 64
    for bsk in keyset["lweBootstrapKeys"]:
        if bsk["inputId"] == small["id"]:
            bsk["params"]["inputLweDimension"] = 64
    for ksk in keyset["lweKeyswitchKeys"]:
        if ksk["outputId"] == small["id"]:
            ksk["params"]["outputLweDimension"] = 64


def _tiny_keyswitch_noise(specs: dict) -> None:
    specs["keyset"]["lweKeyswitchKeys"][0]["params"]["variance"] = 1e-20


def _tiny_input_noise(specs: dict) -> None:
    specs["circuits"][0]["inputs"][0]["typeInfo"]["lweCiphertext"]["encryption"]["variance"] = 1e-40


def _tiny_bootstrap_noise(specs: dict) -> None:
    specs["keyset"]["lweBootstrapKeys"][0]["params"]["variance"] = 0.0


WEAKENINGS = {
    "tiny LWE dimension": (_tiny_lwe_key, "LWE dimension of secret key 1 is 64, the minimum is 450"),
    "keyswitch noise": (_tiny_keyswitch_noise, "noise variance of keyswitch key 0 is 1e-20 .* the minimum is"),
    "input noise": (_tiny_input_noise, "noise variance of the encryption of input 0 .* is 1e-40"),
    "bootstrap noise": (_tiny_bootstrap_noise, "noise variance of bootstrap key 0 is 0 "),
}


@pytest.mark.parametrize("weakening", list(WEAKENINGS))
def test_weakened_parameters_are_refused_before_any_key(saved_classifier, weakening, no_keygen, monkeypatch):
    edit, words = WEAKENINGS[weakening]
    weak = _with_specs(_client_zip(saved_classifier), edit)
    weak_fingerprint = fingerprint(weak)  # a sound artefact: only the security check can refuse it
    with pytest.raises(PayloadError, match=f"below 128-bit security: .*{words}"):
        Client(weak, fingerprint=weak_fingerprint)
    # without the check, concrete-python would take it and generate weak keys
    monkeypatch.setattr(client_module, "check_security", lambda specs: None)
    assert Client(weak).fingerprint == weak_fingerprint


def test_an_unencrypted_input_is_refused(saved_classifier):
    def plaintext(specs: dict) -> None:
        type_info = specs["circuits"][0]["inputs"][0]["typeInfo"]
        type_info["plaintext"] = {"shape": {"dimensions": [1, 2]}, "integerPrecision": 64, "isSigned": False}
        del type_info["lweCiphertext"]

    with pytest.raises(PayloadError, match="unencrypted"):
        Client(_with_specs(_client_zip(saved_classifier), plaintext))


def test_the_curve_is_concrete_s(saved_classifier):
    """Concrete chose the smallest noise its 128-bit curve allows: the check's figures are the same."""
    _, members = container.unpack(_client_zip(saved_classifier), "client", max_bytes=1 << 30)
    keyset = json.loads(members["client.specs.json"])["keyset"]
    dimensions = {key["id"]: key["params"]["lweDimension"] for key in keyset["lweSecretKeys"]}
    for ksk in keyset["lweKeyswitchKeys"]:
        log2_std = 0.5 * np.log2(ksk["params"]["variance"])
        assert log2_std == pytest.approx(min_log2_std(dimensions[ksk["outputId"]]), abs=1e-6)


# ---------------------------------------------------------------- versions

def test_another_concrete_version_is_refused(saved_classifier, no_keygen):
    installed = versions()["concrete-python"]
    old = _rewritten(_client_zip(saved_classifier), versions={"fheestimators": "0.1.0", "concrete-python": "2.9.1"})
    with pytest.raises(PayloadError, match=f"the client artefact: made with concrete-python 2.9.1, but this process "
                                           f"has concrete-python {re.escape(installed)}.*save the model again.*"
                                           "install concrete-python==2.9"):
        Client(old)


def test_check_versions_for_evaluation_keys():
    major, minor = versions()["concrete-python"].split(".")[:2]
    check_versions({"concrete-python": f"{major}.{minor}.99"}, "the evaluation keys")  # a patch release is fine
    with pytest.raises(PayloadError, match="the evaluation keys: made with concrete-python 1.0.0"):
        check_versions({"concrete-python": "1.0.0"}, "the evaluation keys")
    with pytest.raises(PayloadError, match="records no concrete-python version"):
        check_versions(None, "the evaluation keys")


def test_evaluation_keys_record_the_versions(pinned_client):
    header, _ = container.unpack(pinned_client.evaluation_keys(), "evaluation_keys", max_bytes=1 << 30)
    assert header["versions"] == versions()
    check_versions(header["versions"], "the evaluation keys")


# ---------------------------------------------------------------- RemoteModel

class FakeService:
    """An HTTP service in a function (``httpx.MockTransport``): announces a fingerprint, serves a
    client artefact, and runs the real ``Server`` for keys and predictions."""

    def __init__(self, announced: str, client_zip: bytes, server: Optional[Server] = None):
        self.announced, self.client_zip, self.server = announced, client_zip, server
        self.requests: list[str] = []
        self.keys: dict[str, fhe.EvaluationKeys] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "fingerprint": self.announced, "model": "classifier"})
        if path == "/client":
            return httpx.Response(200, content=self.client_zip, headers={"X-Model-Fingerprint": self.announced})
        if path == "/keys" and self.server is not None:
            client_id = f"c{len(self.keys)}"
            self.keys[client_id] = self.server.load_evaluation_keys(request.content)
            return httpx.Response(201, json={"client_id": client_id, "token": "t"})
        if path.endswith("/predict") and self.server is not None:
            keys = self.keys.get(path.split("/")[2])
            if keys is None:
                return httpx.Response(404, json={"detail": "no client"})
            return httpx.Response(200, content=self.server.run(request.content, keys))
        return httpx.Response(404, json={"detail": "not here"})

    def remote(self, **kwargs) -> RemoteModel:
        return RemoteModel(URL, transport=httpx.MockTransport(self), **kwargs)


def test_remote_model_needs_a_pin():
    with pytest.raises(ValueError, match="fingerprint=.*weak.*fingerprint\\('model/'\\).*Client\\('model/'\\)"):
        RemoteModel(URL)


def test_a_service_serving_another_artefact_is_refused_before_any_key(saved_classifier, pinned, tmp_path,
                                                                      no_keygen):
    other = _rewritten(_client_zip(saved_classifier), {"model.json": b'{"forged": 1}'}, refingerprint=True)
    weak = _with_specs(_client_zip(saved_classifier), _tiny_lwe_key)
    cases = [(pinned, other, "not the pinned model"), (pinned, weak, "not the pinned model"),
             (pinned, _rewritten(weak, fingerprint_=pinned), "was altered"),
             # pinning a weak model (its owner was fooled) does not make it acceptable
             (fingerprint(weak), weak, "below 128-bit security")]
    for pin, served, words in cases:
        service = FakeService(pin, served)  # it claims the pinned model, and serves this artefact
        with pytest.raises(PayloadError, match=f"served by {URL} is refused: .*{words}"):
            service.remote(fingerprint=pin, key_dir=tmp_path)
        assert service.requests == ["GET /health", "GET /client"]
        assert not list(tmp_path.rglob("*"))  # no key, no cached artefact


def test_a_service_announcing_another_model_is_refused(saved_classifier, pinned, tmp_path, no_keygen):
    service = FakeService("f" * 64, _client_zip(saved_classifier))
    with pytest.raises(PayloadError, match=f"runs model {'f' * 64}, not the pinned model {pinned}"):
        service.remote(fingerprint=pinned, key_dir=tmp_path)
    assert service.requests == ["GET /health"]
    with pytest.raises(PayloadError, match="the service at .* runs ffff"):
        service.remote(client_dir_or_zip=saved_classifier, key_dir=tmp_path)


def test_a_pinned_remote_model_predicts(saved_classifier, pinned, server, classifier, rows, tmp_path):
    service = FakeService(pinned, _client_zip(saved_classifier), server)
    with service.remote(fingerprint=pinned, key_dir=tmp_path) as model:
        np.testing.assert_array_equal(model.predict(rows[:2]), classifier.predict(rows[:2]))
    assert (tmp_path / "client.zip").read_bytes() == _client_zip(saved_classifier)
    # a cached artefact that is not the pinned model is not used: the pinned one is downloaded again
    (tmp_path / "client.zip").write_bytes(_with_specs(_client_zip(saved_classifier), _tiny_keyswitch_noise))
    service.requests.clear()
    with service.remote(fingerprint=pinned, key_dir=tmp_path) as again:
        assert again.client.fingerprint == pinned and again.uploads == 0
    assert service.requests == ["GET /health", "GET /client"]
    assert fingerprint(tmp_path) == pinned
