"""The service's bounds without a server: ``Limits``, the key store's capacity, expiry and quarantine,
and what ``fheestimators serve`` refuses to start with."""
from __future__ import annotations

import os
import time

import pytest

from fheestimators.deployment import cli
from fheestimators.deployment.service import KeyStore, Limits
from fheestimators.deployment.service.keystore import BadToken, Quarantined, StoreFull, UnknownClient, keys_digest

FINGERPRINT = "f" * 64


def test_limits_travel_through_the_environment():
    limits = Limits(workers=3, max_samples=5, job_timeout_s=12.5)
    assert Limits.from_environment(limits.to_environment()) == limits
    assert limits.to_environment()["FHEESTIMATORS_MAX_SAMPLES"] == "5"
    with pytest.raises(ValueError, match="max_samples must be an integer, not 'many'"):
        Limits.from_environment({"FHEESTIMATORS_MAX_SAMPLES": "many"})
    with pytest.raises(ValueError, match="max_clients must be positive"):
        Limits(max_clients=0)


def test_the_key_store_is_bounded_in_key_sets_and_bytes(tmp_path):
    store = KeyStore(tmp_path, max_clients=2, max_bytes=10)
    store.add(FINGERPRINT, b"1234")
    store.add(FINGERPRINT, b"5678")
    with pytest.raises(StoreFull, match="holds 2 key sets"):
        store.reserve(FINGERPRINT, b"9")
    assert KeyStore(tmp_path, max_bytes=10).usage() == (2, 8)
    with pytest.raises(StoreFull, match="holds 8 bytes"):
        KeyStore(tmp_path, max_bytes=10).reserve(FINGERPRINT, b"abc")


def test_unused_key_sets_and_dead_uploads_expire(tmp_path):
    store = KeyStore(tmp_path)
    used, _ = store.add(FINGERPRINT, b"used")
    idle, _ = store.add(FINGERPRINT, b"idle")
    dead = store.reserve(FINGERPRINT, b"never activated")
    now = time.time()
    for client_id in (idle, dead):
        for path in (tmp_path / client_id, tmp_path / client_id / "evaluation_keys"):
            os.utime(path, (now - 7200, now - 7200))
    store.touch(used)
    assert sorted(store.expire(ttl_s=3600, now=now)) == sorted([idle, dead])
    assert store.client_ids() == [used]
    assert store.expire(ttl_s=3600, now=now) == []


def test_quarantined_keys_and_their_client_are_refused(tmp_path):
    store = KeyStore(tmp_path)
    client_id, token = store.add(FINGERPRINT, b"crashing keys")
    digest = store.digest_of(client_id)
    assert digest == keys_digest(b"crashing keys") and not store.is_quarantined(digest)
    store.quarantine(digest, client_id)
    assert store.is_quarantined(digest) and not store.is_quarantined(keys_digest(b"other keys"))
    with pytest.raises(Quarantined, match="refused from now on"):
        store.check(client_id, token)
    assert not (tmp_path / client_id / "evaluation_keys").exists()  # nobody may use them again
    assert not store.is_quarantined("../../etc/passwd")


def test_a_client_deletes_its_own_keys_only(tmp_path):
    store = KeyStore(tmp_path)
    client_id, token = store.add(FINGERPRINT, b"keys")
    with pytest.raises(BadToken):
        store.delete(client_id, "not the token")
    store.delete(client_id, token)
    assert store.client_ids() == [] and store.usage() == (0, 0)
    with pytest.raises(UnknownClient):
        store.delete(client_id, token)


@pytest.mark.parametrize("options, message", [
    (["--host", "0.0.0.0"], "give an API token"),
    (["--host", "10.1.2.3", "--max-clients", "0"], "max_clients must be positive"),
    (["--max-samples", "lots"], "max_samples must be an integer"),
])
def test_serve_refuses_unsafe_or_bad_options(options, message, saved_classifier, capsys, monkeypatch):
    monkeypatch.delenv("FHEESTIMATORS_API_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", str(saved_classifier), *options])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_an_empty_api_token(saved_classifier, tmp_path, capsys):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(SystemExit):
        cli.main(["serve", str(saved_classifier), "--host", "0.0.0.0", "--api-token-file", str(tmp_path / "token")])
    assert "the API token is empty" in capsys.readouterr().err
