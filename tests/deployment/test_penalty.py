"""The per-address penalty: an address refused too often is refused unread; the others, and honest mistakes, are not.

The app runs in-process (``TestClient``); each client address is a ``TestClient`` of its
own (``client=(host, port)``), all on one app. Refusals come from requests that cost the
service nothing (an unknown route, garbage keys), so that a loaded machine cannot spread
them past the window.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fheestimators.deployment import Client
from fheestimators.deployment.service import Limits, create_app
from fheestimators.deployment.service.penalties import Penalties, client_address

ATTACKER, OTHER = ("203.0.113.7", 40000), ("198.51.100.1", 40001)


def _app(saved_classifier, tmp_path, **limits):
    return create_app(saved_classifier, key_store=tmp_path / "store", limits=Limits(workers=1, **limits))


def _huge_body(consumed: list, chunks: int = 10_000, size: int = 1 << 20):
    """10 GB, one MB at a time, noting each chunk the service takes."""
    for _ in range(chunks):
        consumed.append(size)
        yield bytes(size)


def test_an_address_refused_too_often_is_refused_before_its_body_is_read(saved_classifier, tmp_path):
    app = _app(saved_classifier, tmp_path, max_address_refusals=3)
    attacker, other = TestClient(app, client=ATTACKER), TestClient(app, client=OTHER)
    for _ in range(3):
        assert attacker.post("/keys", content=b"not keys").status_code == 400
    consumed = []
    refused = attacker.post("/keys", content=_huge_body(consumed))
    assert refused.status_code == 429 and "refused until the window ends" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= Limits().address_window_s
    assert consumed == []  # not one chunk of the 10 GB was asked for
    assert attacker.get("/health").status_code == 429  # every route, not only the one it abused
    # another address is served, its body read (and refused for what it is)
    assert other.get("/health").status_code == 200
    garbage = other.post("/keys", content=_huge_body(consumed, chunks=2))
    assert garbage.status_code == 400 and consumed
    metrics = other.get("/metrics/").text
    assert "fheestimators_penalized_requests_total 2.0" in metrics
    # per address, a count of refusals and one of uploads; addresses are never shown in a label
    assert "fheestimators_address_counts 4.0" in metrics


def test_the_penalty_ends_with_its_window(saved_classifier, tmp_path):
    app = _app(saved_classifier, tmp_path, max_address_refusals=2, address_window_s=2)
    attacker = TestClient(app, client=ATTACKER)
    for _ in range(50):  # a refusal to an unknown route costs ~1 ms: some 2-s window holds three
        answer = attacker.get("/no-such-route")
        if answer.status_code == 429:
            break
        assert answer.status_code == 404
    assert answer.status_code == 429
    time.sleep(int(answer.headers["Retry-After"]) + 0.1)
    assert attacker.get("/health").status_code == 200


def test_too_many_uploads_from_one_address_are_refused_and_counted(saved_classifier, tmp_path):
    app = _app(saved_classifier, tmp_path, max_address_uploads=2, max_address_refusals=4)
    attacker = TestClient(app, client=ATTACKER)
    assert [attacker.post("/keys", content=b"x").status_code for _ in range(2)] == [400, 400]
    too_many = attacker.post("/keys", content=b"x")
    assert too_many.status_code == 429 and "key uploads within" in too_many.json()["detail"]
    assert too_many.headers["Retry-After"]
    # two garbage uploads and one upload too many: the fourth refusal starts the penalty
    assert attacker.get("/no-such-route").status_code == 404
    assert "refused until the window ends" in attacker.get("/health").json()["detail"]


def test_service_load_is_not_the_clients_fault_and_one_mistake_is_forgiven(
        saved_classifier, classifier, rows, tmp_path):
    app = _app(saved_classifier, tmp_path, max_address_refusals=2, max_queued_samples=1)
    client = Client(saved_classifier, key_dir=tmp_path / "keys")
    with TestClient(app, client=OTHER) as honest:
        created = honest.post("/keys", content=client.evaluation_keys())
        assert created.status_code == 201
        path = f"/clients/{created.json()['client_id']}"
        auth = {"Authorization": f"Bearer {created.json()['token']}"}
        assert honest.post(f"{path}/predict", content=client.encrypt(rows[:1]),
                           headers={"Authorization": "Bearer wrong"}).status_code == 401  # one mistake
        for _ in range(4):  # two samples when the service queues one: its load, answered 429
            busy = honest.post(f"{path}/jobs", content=client.encrypt(rows[:2]), headers=auth)
            assert busy.status_code == 429 and "Retry-After" in busy.headers
            assert "samples of work queued" in busy.json()["detail"]
        answer = honest.post(f"{path}/predict", content=client.encrypt(rows[:1]), headers=auth)
        assert answer.status_code == 200
        np.testing.assert_array_equal(client.decrypt(answer.content), classifier.predict(rows[:1]))


def test_quarantines_weigh_the_whole_bound_and_the_bookkeeping_is_bounded():
    limits = Limits(max_address_refusals=5, max_address_counts=8)
    penalties = Penalties(limits)
    penalties.refused("192.0.2.1")
    assert penalties.retry_after("192.0.2.1") is None  # one mistake
    penalties.quarantined("192.0.2.2")
    assert 1 <= penalties.retry_after("192.0.2.2") <= limits.address_window_s
    for i in range(100):  # a crowd of addresses: the table stops at its bound
        penalties.refused(f"10.0.{i}.1", cost=5)
    assert penalties.counts == 8
    assert penalties.retry_after("10.0.99.1") is None  # uncounted, as the metrics say
    penalties.refused(None)  # no address (a Unix socket): nothing to count it under
    assert penalties.retry_after(None) is None


@pytest.mark.parametrize("host, address", [
    ("192.0.2.10", "192.0.2.10"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # one subscriber's /64 counts as one address
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.10", "192.0.2.10"),
    ("testclient", "testclient"),
])
def test_client_addresses(host, address):
    assert client_address({"client": (host, 1234)}) == address
    assert client_address({"client": None}) is None
