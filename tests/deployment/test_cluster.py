"""``Server(..., dask=...)`` and ``fheestimators serve --dask`` on a real local dask cluster.

One cluster of two worker processes (one thread each) runs for the module; the client's
keys are generated once. The workers write into a folder of the test (their local
directory and their temporary files), which is searched for the secret key at the end.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from fheestimators.deployment import Client, PayloadError, RemoteModel, Server  # noqa: E402
from fheestimators.deployment import container  # noqa: E402
from fheestimators.deployment.cluster import TASK_PREFIX, worker_cache_info  # noqa: E402

from test_service import TIMEOUT, Service, _holds_any, _secret_key_windows  # noqa: E402


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dask-workers")


@pytest.fixture(scope="module")
def cluster(worker_dir):
    # TMPDIR: concrete-python unpacks the circuit into a temporary folder, which is searched too
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, local_directory=str(worker_dir),
        env={"TMPDIR": str(worker_dir)}, dashboard_address=None, silence_logs=logging.ERROR)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def dask_client(cluster):
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()


@pytest.fixture(scope="module")
def key_dir(saved_classifier, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-client")
    Client(saved_classifier, key_dir=folder).keygen()
    return folder


@pytest.fixture(scope="module")
def fhe_client(saved_classifier, key_dir) -> Client:
    return Client(saved_classifier, key_dir=key_dir)


@pytest.fixture(scope="module")
def dask_server(saved_classifier, dask_client):
    with Server(saved_classifier, dask=dask_client) as server:
        yield server


def _run_tasks(stream) -> list[dict]:
    return [task for task in stream.data if str(task["key"]).startswith(TASK_PREFIX)]


def test_the_core_package_does_not_import_distributed():
    code = ("import sys, fheestimators.deployment, fheestimators.deployment.service, fheestimators.deployment.cli\n"
            "assert 'distributed' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_batch_on_the_cluster_equals_the_local_run(dask_server, dask_client, fhe_client, saved_classifier,
                                                     classifier, rows):
    X = np.tile(rows, (3, 1))[:20]
    payload, keys = fhe_client.encrypt(X), fhe_client.evaluation_keys()
    assert len(dask_server.cluster.chunks(list(X))) == 4  # two per worker thread
    outputs = dask_server.run(payload, keys)
    local = Server(saved_classifier).run(payload, keys)
    for on_cluster, here in zip(fhe_client.decrypt_raw(outputs), fhe_client.decrypt_raw(local), strict=True):
        np.testing.assert_array_equal(on_cluster, here)
    np.testing.assert_array_equal(fhe_client.decrypt(outputs), classifier.predict(X))
    caches = dask_client.run(worker_cache_info)
    assert sum(cache["loads"]["samples"] for cache in caches.values()) == 20
    assert [cache["loads"]["keys"] for cache in caches.values()] == [1, 1], caches  # both workers took chunks
    assert dask_server.cluster.shipped == 2  # the artefact and the key set
    shipped_bytes = {"artefact": (saved_classifier / "server.zip").stat().st_size,
                     "keys": len(dask_server.check_evaluation_keys(keys))}
    assert dask_server.cluster.shipped_bytes == shipped_bytes

    # a second batch with the same keys: nothing shipped, loaded or even copied between workers
    with distributed.get_task_stream(dask_client) as stream:
        again = dask_server.run(fhe_client.encrypt(X[:3]), keys)
    np.testing.assert_array_equal(fhe_client.decrypt(again), classifier.predict(X[:3]))
    assert dask_server.cluster.shipped == 2 and dask_server.cluster.shipped_bytes == shipped_bytes
    tasks = _run_tasks(stream)
    assert len(tasks) == 3  # one per chunk, none sent again with the data
    assert not [step for task in tasks for step in task["startstops"] if step["action"] != "compute"]
    for cache in dask_client.run(worker_cache_info).values():
        assert cache["loads"]["servers"] == 1 and cache["loads"]["keys"] == 1


def test_keys_of_another_model_are_refused_before_they_are_shipped(dask_server, fhe_client, saved_classifier, rows):
    payload, keys = fhe_client.encrypt(rows[:1]), fhe_client.evaluation_keys()
    shipped = dask_server.cluster.shipped
    with pytest.raises(PayloadError, match="not a evaluation_keys container"):
        dask_server.run(payload, keys[:1000])
    with pytest.raises(PayloadError, match="where this model's have"):
        dask_server.run(payload, _with_keys(keys, b"k" * 1000))
    assert dask_server.cluster.shipped == shipped
    with pytest.raises(TypeError, match="distributed.Client or a scheduler address"):
        Server(saved_classifier, dask=8786)


def _with_keys(evaluation_keys: bytes, keys: bytes) -> bytes:
    header, _ = container.unpack(evaluation_keys, "evaluation_keys")
    fields = {k: v for k, v in header.items() if k not in ("format", "kind", "fingerprint")}
    return container.pack("evaluation_keys", header["fingerprint"], {"keys": keys}, **fields)


def test_the_service_runs_its_batches_on_the_cluster(saved_classifier, cluster, dask_client, key_dir, classifier,
                                                     rows, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask-service")
    service = Service(saved_classifier, folder / "key_store", folder / "service.log")
    service.start("--dask", cluster.scheduler_address)
    try:
        service.wait_ready()
        with distributed.get_task_stream(dask_client) as stream:
            with RemoteModel(service.url, key_dir=key_dir, timeout=TIMEOUT) as model:
                predicted = model.predict(rows)
        np.testing.assert_array_equal(predicted, classifier.predict(rows))
        assert _run_tasks(stream), "the service ran the batch itself, not on the cluster"
    finally:
        service.stop()


def test_a_worker_lost_during_a_run_costs_only_its_chunks(dask_server, dask_client, fhe_client, classifier, rows):
    X = np.tile(rows, (5, 1))  # 40 samples: 4 chunks of 10, a second or more each
    payload, keys = fhe_client.encrypt(X), fhe_client.evaluation_keys()
    before = _samples_run(dask_client)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(dask_server.run, payload, keys)
        victim = _a_worker_running_a_chunk(dask_client)
        time.sleep(0.5)  # into the chunk
        pid = dask_client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)  # its nanny starts another worker
        assert not running.done()
        outputs = running.result(timeout=TIMEOUT)
    np.testing.assert_array_equal(fhe_client.decrypt(outputs), classifier.predict(X))
    assert victim not in dask_client.scheduler_info()["workers"]
    # the living workers ran no sample twice: the survivor's chunks were not run again
    after = _samples_run(dask_client)
    assert sum(after[worker] - before.get(worker, 0) for worker in after) <= len(X)
    dask_client.wait_for_workers(2, timeout=60)


def _samples_run(dask_client) -> dict[str, int]:
    return {worker: cache["loads"]["samples"] for worker, cache in dask_client.run(worker_cache_info).items()}


def test_keys_the_cluster_lost_are_shipped_again(dask_server, fhe_client, classifier, rows):
    keys = fhe_client.evaluation_keys()
    dask_server.run(fhe_client.encrypt(rows[:1]), keys)
    shipped, shipped_bytes = dask_server.cluster.shipped, dict(dask_server.cluster.shipped_bytes)
    _, future, _ = dask_server.cluster._keys[keys]
    future.cancel()  # as when the last worker holding them dies
    outputs = dask_server.run(fhe_client.encrypt(rows[:2]), keys)
    np.testing.assert_array_equal(fhe_client.decrypt(outputs), classifier.predict(rows[:2]))
    assert dask_server.cluster.shipped == shipped + 1
    shipped_bytes["keys"] += len(dask_server.check_evaluation_keys(keys))  # the keys again, not the artefact
    assert dask_server.cluster.shipped_bytes == shipped_bytes


def _a_worker_running_a_chunk(dask_client, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in dask_client.processing().items():
            if any(str(key).startswith(TASK_PREFIX) for key in keys):
                return worker
        time.sleep(0.05)
    pytest.fail("no worker started a chunk")


def test_no_file_of_the_workers_holds_the_secret_key(dask_server, dask_client, fhe_client, key_dir, worker_dir,
                                                     classifier, rows):
    # the workers have run with these keys (also when this test runs alone)
    outputs = dask_server.run(fhe_client.encrypt(rows[:2]), fhe_client.evaluation_keys())
    np.testing.assert_array_equal(fhe_client.decrypt(outputs), classifier.predict(rows[:2]))
    assert all(Path(folder).is_relative_to(worker_dir) for folder in dask_client.run(tempfile.gettempdir).values())
    windows = _secret_key_windows(fhe_client)
    # the search finds the key where it is, and the workers did write files to search
    assert _holds_any(key_dir, windows)
    assert any(path.is_file() for path in worker_dir.rglob("*"))
    assert not _holds_any(worker_dir, windows)
