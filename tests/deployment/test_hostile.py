"""An attacker against ``fheestimators serve`` on 127.0.0.1, with small limits so that every bound is reached.

After every attack: ``/health`` answers within a second, an honest client predicts
correctly, the refusal came within seconds, and the service process's peak memory grew
by less than a stated bound. Every loop is bounded.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from fheestimators.deployment import Client, RemoteModel, Server, container
from fheestimators.deployment import server as server_module
from fheestimators.fhe import evaluation

from crafted_keys import FRAMING_LIES, amplified, declaring, framing_lie, reframed
from serving import UNPENALIZED, Service, metric, wait_for

LIMITS = ["--workers", "1", "--max-uploads", "1", "--max-samples", "16", "--max-queued-samples", "20",
          "--body-timeout-s", "3", "--max-clients", "6", "--sample-timeout-s", "60", "--key-check-timeout-s", "10",
          *UNPENALIZED]
TIMEOUT = 120.0
BOMB_MB = 32
MEMORY_MB = 64  # the most any single attack may add to the service's peak memory


@pytest.fixture(scope="module")
def service(saved_classifier, tmp_path_factory):
    with Service.in_tmp(saved_classifier, tmp_path_factory, "hostile").start(*LIMITS).wait_ready() as service:
        yield service
    print(service.log.read_text(errors="replace")[-20000:])  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def honest(service, saved_classifier, tmp_path_factory):
    model = RemoteModel(service.url, saved_classifier, key_dir=tmp_path_factory.mktemp("honest"), timeout=TIMEOUT)
    model._register_once()
    yield model
    model.close()


@pytest.fixture
def still_serving(service, honest, classifier, rows):
    """Runs the test, then checks that the service survived it, and how much memory it cost."""
    before = service.peak_memory_mb()
    yield
    # generous: a loaded CI machine delays everything; the load benchmark measures /health's latency
    assert httpx.get(f"{service.url}/health", timeout=15.0).status_code == 200
    np.testing.assert_array_equal(honest.predict(rows[:2]), classifier.predict(rows[:2]))
    assert service.peak_memory_mb() - before < MEMORY_MB
    assert service.process.poll() is None


def _keys_of(client: Client) -> bytes:
    return _raw(client.evaluation_keys())


def _raw(keys: bytes) -> bytes:
    """The serialized key set inside an evaluation keys container."""
    return container.unpack(keys, "evaluation_keys")[1]["keys"]


def _as_keys_of(raw: bytes, honest: RemoteModel) -> bytes:
    """Bytes dressed as evaluation keys of the service's model: the header is public."""
    return container.pack("evaluation_keys", honest.fingerprint, {"keys": raw},
                          versions=container.unpack(honest.client.evaluation_keys(), "evaluation_keys")[0]["versions"])


def _post(service, path: str, body, headers=None, source: str = "127.0.0.1") -> tuple[httpx.Response, float]:
    """POST from the address ``source`` (any of 127.0.0.0/8)."""
    start = time.monotonic()
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=TIMEOUT) as http:
        response = http.post(service.url + path, content=body, headers=headers or {})
    return response, time.monotonic() - start


def _zip_bomb(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive, archive.open("keys", "w") as member:
        for _ in range(BOMB_MB):
            member.write(bytes(1 << 20))
    return buffer.getvalue()


def _declared_bomb(honest) -> bytes:
    """Our own format, claiming a 10 GB member behind a 1 KB body (the header's length rewritten to match)."""
    return declaring(_as_keys_of(b"\0" * 1000, honest), 10_000_000_000)


@pytest.mark.parametrize("bomb", ["deflate", "bzip2", "lzma", "declared"])
def test_bombs_are_refused_at_once(bomb, service, honest, still_serving):
    body = (_declared_bomb(honest) if bomb == "declared" else
            _zip_bomb({"deflate": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}[bomb]))
    assert len(body) < 200_000
    response, seconds = _post(service, "/keys", body)
    assert response.status_code == 400, response.text
    if bomb == "declared":  # refused for its claim, not for a header broken by the crafting
        assert "declares 10000000000 bytes" in response.json()["detail"], response.text
    assert seconds < 30  # a decompressed bomb took minutes, or the process


def _framing_lie(craft: str, honest: RemoteModel, foreign) -> bytes:
    return _as_keys_of(framing_lie(craft, _keys_of(honest.client), _raw(foreign.keys)), honest)


@pytest.fixture(scope="module")
def local_server(saved_classifier):
    return Server(saved_classifier)


@pytest.mark.parametrize("craft", FRAMING_LIES)
def test_keys_whose_framing_lies_are_refused_before_concrete_reads_them(craft, honest, foreign, local_server,
                                                                        monkeypatch):
    reads = []
    deserialize = server_module.fhe.EvaluationKeys.deserialize
    monkeypatch.setattr(server_module.fhe.EvaluationKeys, "deserialize",
                        lambda data: reads.append(len(data)) or deserialize(data))
    with pytest.raises(container.PayloadError, match="framing"):
        local_server.load_evaluation_keys(_framing_lie(craft, honest, foreign))
    assert reads == []
    local_server.load_evaluation_keys(honest.client.evaluation_keys())  # the counter counts: honest keys are read
    assert len(reads) == 1


@pytest.mark.parametrize("craft", FRAMING_LIES)
def test_the_service_refuses_keys_whose_framing_lies(craft, service, honest, foreign, still_serving):
    log_before = len(service.log.read_bytes())
    response, _ = _post(service, "/keys", _framing_lie(craft, honest, foreign))
    assert response.status_code == 400 and "framing" in response.json()["detail"], response.text
    # concrete-python never read them: it logs every short read of a framing that declares too much
    assert b"Premature EOF" not in service.log.read_bytes()[log_before:]


def test_keys_that_crash_the_evaluator_are_quarantined(service, honest, foreign, rows, still_serving):
    # another model's keys grown to this model's size by a segment their framing declares: they load, then crash
    # concrete-python's keyswitch; sent from an address of their own, which the quarantine penalizes at once
    crafted = _as_keys_of(reframed(_raw(foreign.keys), len(_keys_of(honest.client))), honest)
    created, _ = _post(service, "/keys", crafted, source="127.0.0.2")
    assert created.status_code == 201, created.text
    auth = {"Authorization": f"Bearer {created.json()['token']}"}
    path = f"/clients/{created.json()['client_id']}/predict"
    crashed, seconds = _post(service, path, honest.client.encrypt(rows[:1]), auth, source="127.0.0.2")
    assert crashed.status_code == 400 and "died of SIGSEGV" in crashed.json()["detail"], crashed.text
    assert seconds < 60
    penalized, _ = _post(service, "/keys", b"not keys", source="127.0.0.2")
    assert penalized.status_code == 429 and int(penalized.headers["Retry-After"]) > 0
    # from another address, the client's token and the same bytes meet the quarantine itself
    refused, seconds = _post(service, path, honest.client.encrypt(rows[:1]), auth)
    assert refused.status_code == 403 and "quarantined" in refused.json()["detail"]
    again, seconds = _post(service, "/keys", crafted)
    assert again.status_code == 403 and seconds < 15  # the same bytes: not loaded again
    assert metric(service.url, "fheestimators_worker_restarts_total", 'cause="EvaluatorCrashed"') >= 1


def _evaluator_memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status if line.startswith("Vm")}


def test_keys_that_share_one_payload_are_refused_within_bounded_memory(service, honest, still_serving):
    # 40 pointers to the 24 MB bootstrap key: about 1 GB if read unbounded (200 took gigabytes), kept small
    # so that a broken defence costs this machine a gigabyte, not its memory
    raw = _keys_of(honest.client)
    wait_for(lambda: len(service.evaluator_pids()) == 1, timeout=60)  # a previous test's restart is done
    (pid,) = service.evaluator_pids()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert "Max data size" in limits and "unlimited" not in limits.split("Max data size")[1].splitlines()[0]
    before = _evaluator_memory_mb(pid)
    response, _ = _post(service, "/keys", _as_keys_of(amplified(raw, 40), honest))
    assert response.status_code == 400 and "memory" in response.json()["detail"], response.text
    assert service.evaluator_pids() == [pid]  # refused by the evaluator, which lives on
    allowed_mb = evaluation.key_load_bytes(len(raw)) / (1 << 20)
    # resident memory grows by what the load may map, and by code pages touched for the first time
    assert _evaluator_memory_mb(pid)["VmHWM"] < max(before["VmHWM"], before["VmRSS"] + allowed_mb) + 128


@pytest.mark.parametrize("damage", ["truncated", "padded", "bit-flipped", "random"])
def test_damaged_keys_are_refused_or_kept_apart(damage, service, honest, still_serving):
    keys = _keys_of(honest.client)
    rng = np.random.default_rng(0)
    if damage == "truncated":
        raw = keys[: len(keys) // 2]
    elif damage == "padded":
        raw = keys + bytes(100)
    elif damage == "bit-flipped":
        flipped = bytearray(keys)
        for i in rng.integers(0, 4096, 64):  # in the structure at the start, not only in key material
            flipped[i] ^= 1 << int(rng.integers(0, 8))
        raw = bytes(flipped)
    else:
        raw = rng.bytes(len(keys))
    response, seconds = _post(service, "/keys", _as_keys_of(raw, honest))
    assert seconds < 30
    if damage in ("truncated", "padded"):
        assert response.status_code == 400 and "bytes where" in response.json()["detail"]
    else:  # refused when they do not load; else stored for their uploader alone
        assert response.status_code in (201, 400), response.text
        if response.status_code == 201:
            client = response.json()
            assert httpx.delete(f"{service.url}/clients/{client['client_id']}", timeout=TIMEOUT,
                                headers={"Authorization": f"Bearer {client['token']}"}).status_code == 204


def test_random_ciphertexts_are_refused(service, honest, saved_classifier, tmp_path, rows, still_serving):
    # a client of its own: if these bytes crashed the evaluator, its keys would be quarantined
    attacker = RemoteModel(service.url, saved_classifier, key_dir=tmp_path, timeout=TIMEOUT)
    attacker._register_once()
    genuine = container.unpack(attacker.client.encrypt(rows[:2]), "inputs")
    rng = np.random.default_rng(1)
    members = {name: rng.bytes(len(value)) for name, value in genuine[1].items()}
    fields = {k: v for k, v in genuine[0].items() if k not in ("format", "kind", "fingerprint")}
    response, seconds = _post(service, f"/clients/{attacker.client_id}/predict",
                              container.pack("inputs", honest.fingerprint, members, **fields),
                              {"Authorization": f"Bearer {attacker._client_token}"})
    assert response.status_code == 400 and seconds < 60, response.text
    attacker.close()


def test_a_flood_of_anonymous_uploads_is_bounded(service, honest, key_store_of, still_serving):
    keys = honest.client.evaluation_keys()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: _post(service, "/keys", keys)[0], range(10)))
    statuses = sorted(response.status_code for response in answers)
    # 408: under a loaded CI run, reading the one admitted body took longer than the fixture's
    # 3-s --body-timeout-s; a refusal too, and the slot is freed
    assert set(statuses) <= {201, 408, 429, 507}, statuses
    assert 429 in statuses  # one upload read at a time
    assert all("Retry-After" in r.headers for r in answers if r.status_code == 429)
    n_clients, _ = key_store_of(service)
    assert n_clients <= 6  # --max-clients
    for response in answers:  # the flood's own clients remove their keys
        if response.status_code == 201:
            client = response.json()
            assert httpx.delete(f"{service.url}/clients/{client['client_id']}", timeout=TIMEOUT,
                                headers={"Authorization": f"Bearer {client['token']}"}).status_code == 204
    assert key_store_of(service)[0] < n_clients or n_clients == 1


@pytest.fixture
def key_store_of():
    def usage(service):
        return (metric(service.url, "fheestimators_key_store_key_sets"),
                metric(service.url, "fheestimators_key_store_bytes"))
    return usage


def test_a_slow_body_is_cut_off_and_frees_its_upload_slot(service, honest, still_serving):
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(b"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\0" * 10)
        start = time.monotonic()
        # the slot is held meanwhile: another upload is told to come back later
        busy, _ = _post(service, "/keys", honest.client.evaluation_keys())
        assert busy.status_code == 429
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - start < 3 + 30  # --body-timeout-s, and slack for a loaded machine
    created, _ = _post(service, "/keys", honest.client.evaluation_keys())
    assert created.status_code == 201
    client = created.json()
    httpx.delete(f"{service.url}/clients/{client['client_id']}", headers={"Authorization": f"Bearer {client['token']}"})


def _queued(service) -> float:
    return metric(service.url, "fheestimators_queued_samples")


def test_a_client_that_hangs_up_cancels_its_work(service, honest, rows, still_serving):
    payload = honest.client.encrypt(np.resize(rows, (16, rows.shape[1])))
    ran_before = metric(service.url, "fheestimators_samples_total")
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(f"POST /clients/{honest.client_id}/predict HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {honest._client_token}\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        wait_for(lambda: _queued(service) == 16, timeout=30)  # admitted: the work has begun
    # hung up: 16 samples take one evaluator several seconds; cancelled, the queue empties at once
    wait_for(lambda: _queued(service) == 0, timeout=30.0)
    assert metric(service.url, "fheestimators_samples_total") - ran_before < 16


def test_an_evaluator_killed_mid_run_costs_one_answer(service, honest, rows, still_serving):
    payload = honest.client.encrypt(np.resize(rows, (4, rows.shape[1])))
    auth = {"Authorization": f"Bearer {honest._client_token}"}
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(response=_post(
        service, f"/clients/{honest.client_id}/predict", payload, auth)[0]))
    thread.start()
    wait_for(lambda: _queued(service) > 0 and service.evaluator_pids(), timeout=30)
    for pid in service.evaluator_pids():
        os.kill(pid, signal.SIGKILL)
    thread.join(TIMEOUT)
    response = answer["response"]
    assert response.status_code == 503 and "retry" in response.json()["detail"], response.text
    assert int(response.headers["Retry-After"]) >= 1
    # not quarantined: the next prediction (still_serving) works with the same keys


def test_a_full_queue_answers_429_and_a_job_can_be_cancelled(service, honest, rows, still_serving):
    auth = {"Authorization": f"Bearer {honest._client_token}"}
    many = honest.client.encrypt(np.resize(rows, (16, rows.shape[1])))
    submitted, _ = _post(service, f"/clients/{honest.client_id}/jobs", many, auth)
    assert submitted.status_code == 202
    job = submitted.json()["job_id"]
    full, seconds = _post(service, f"/clients/{honest.client_id}/predict", honest.client.encrypt(rows[:5]), auth)
    assert full.status_code == 429 and "Retry-After" in full.headers  # the job below is still pending
    status = httpx.get(f"{service.url}/clients/{honest.client_id}/jobs/{job}", headers=auth).json()
    assert status["total"] == 16 and status["status"] in ("queued", "running")
    assert httpx.delete(f"{service.url}/clients/{honest.client_id}/jobs/{job}", headers=auth).status_code == 204
    wait_for(lambda: _queued(service) == 0, timeout=30.0)
    assert httpx.get(f"{service.url}/clients/{honest.client_id}/jobs/{job}", headers=auth).status_code == 404


def test_jobs_give_what_predict_gives(service, honest, classifier, rows):
    auth = {"Authorization": f"Bearer {honest._client_token}"}
    submitted, _ = _post(service, f"/clients/{honest.client_id}/jobs", honest.client.encrypt(rows[:3]), auth)
    job = submitted.json()["job_id"]
    status_url = f"{service.url}/clients/{honest.client_id}/jobs/{job}"
    wait_for(lambda: httpx.get(status_url, headers=auth).json()["status"] == "done", timeout=TIMEOUT)
    result = httpx.get(status_url + "/result", headers=auth)
    np.testing.assert_array_equal(honest.client.decrypt(result.content), classifier.predict(rows[:3]))
    # another client cannot see it
    other = {"Authorization": "Bearer " + "x" * 43}
    assert httpx.get(status_url, headers=other).status_code == 401


def test_remote_model_sends_batches_beyond_the_synchronous_limit_as_jobs(service, honest, classifier, rows):
    assert honest.max_samples == 16  # --max-samples, announced by /health
    X = np.resize(rows, (17, rows.shape[1]))
    before = metric(service.url, "fheestimators_requests_total", 'route="/clients/{client_id}/jobs",status="202"')
    np.testing.assert_array_equal(honest.predict(X), classifier.predict(X))
    assert metric(service.url, "fheestimators_requests_total",
                  'route="/clients/{client_id}/jobs",status="202"') == before + 1


def test_the_service_logs_json_events_without_secrets(service, honest, rows):
    honest.predict(rows[:1])
    uploaded, _ = _post(service, "/keys", honest.client.evaluation_keys())
    assert uploaded.status_code == 201
    text = service.log.read_text(errors="replace")
    # evaluators' crash dumps share the stream and may begin or end on an event's line: decode the event alone
    decoder = json.JSONDecoder()
    events = [decoder.raw_decode(line[line.index('{"time"'):])[0] for line in text.splitlines() if '{"time"' in line]
    names = [entry["event"] for entry in events]
    assert "keys_stored" in names and "job_finished" in names
    # one event per restart and per quarantine the metrics counted, in this same process
    assert names.count("evaluator_restarted") == metric(service.url, "fheestimators_worker_restarts_total")
    assert names.count("keys_quarantined") == metric(service.url, "fheestimators_quarantined_key_sets_total")
    assert all(isinstance(entry["time"], float) for entry in events)
    for secret in (honest._client_token, uploaded.json()["token"]):
        assert secret not in text
    client = uploaded.json()
    httpx.delete(f"{service.url}/clients/{client['client_id']}", headers={"Authorization": f"Bearer {client['token']}"})


def test_one_client_s_long_job_does_not_make_another_wait(service, honest, saved_classifier, classifier, rows,
                                                          tmp_path):
    greedy = RemoteModel(service.url, saved_classifier, key_dir=tmp_path, timeout=TIMEOUT)
    greedy._register_once()
    auth = {"Authorization": f"Bearer {greedy._client_token}"}
    submitted, _ = _post(service, f"/clients/{greedy.client_id}/jobs",
                         greedy.client.encrypt(np.resize(rows, (16, rows.shape[1]))), auth)
    assert submitted.status_code == 202
    status_url = f"{service.url}/clients/{greedy.client_id}/jobs/{submitted.json()['job_id']}"
    # the honest sample waits for at most one of the greedy client's samples per evaluator, not sixteen
    np.testing.assert_array_equal(honest.predict(rows[:1]), classifier.predict(rows[:1]))
    assert httpx.get(status_url, headers=auth).json()["done"] < 16
    assert httpx.delete(status_url, headers=auth).status_code == 204
    wait_for(lambda: _queued(service) == 0, timeout=30.0)
    greedy.close()


def test_an_evaluator_past_its_memory_ceiling_is_lost_not_blamed_on_the_client():
    from concurrent.futures import Future
    from types import SimpleNamespace

    from pebble import ProcessExpired

    from fheestimators.deployment.service.workers import EvaluatorLost, Evaluators

    future, causes = Future(), []
    future.set_exception(ProcessExpired("Abnormal termination", code=evaluation.MEMORY_EXIT_STATUS, pid=1))
    with pytest.raises(EvaluatorLost, match="out of memory"):  # 503 and Retry-After: nothing quarantined
        Evaluators.outcome(SimpleNamespace(_on_restart=causes.append), future)
    assert causes == ["EvaluatorLost"]
