"""``Server(..., dask=...)`` and ``fheestimators serve --dask`` on a real local dask cluster.

One cluster of two worker processes (one thread each) runs for the module; the client's
keys are generated once. The workers write into a folder of the test (their local
directory and their temporary files), which is searched for the secret key at the end.
"""
from __future__ import annotations

import asyncio
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
import dask  # noqa: E402
from distributed.utils import get_mp_context  # noqa: E402

from fheestimators.deployment import Client, PayloadError, RemoteModel, Server  # noqa: E402
from fheestimators.deployment import container  # noqa: E402
from fheestimators.deployment.cluster import TASK_PREFIX, ClusterRunner, worker_cache_info  # noqa: E402

from serving import Service  # noqa: E402
from test_service import TIMEOUT, _holds_any, _secret_key_windows  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def forked_workers():
    """The module's worker processes fork from a server that has imported the worker side, as dask's own
    test suite does: started anew (spawn, dask's default), each of the dozen workers these tests start or
    restart would import torch and concrete-python again (about 3 s of CPU each)."""
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context().set_forkserver_preload(["distributed", "fheestimators.deployment.cluster"])
        yield


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dask-workers")


def _local_cluster(worker_dir: Path) -> "distributed.LocalCluster":
    # TMPDIR: concrete-python unpacks the circuit into a temporary folder, which is searched too
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, local_directory=str(worker_dir),
        env={"TMPDIR": str(worker_dir)}, dashboard_address=None, silence_logs=logging.ERROR)


@pytest.fixture(scope="module")
def cluster(worker_dir):
    cluster = _local_cluster(worker_dir)
    yield cluster
    cluster.close()


@pytest.fixture
def own_cluster(worker_dir):
    """A cluster for one test that kills its workers: under load, a nanny closed after restarting one
    and the shared cluster stayed at one worker for the tests after it."""
    with _local_cluster(worker_dir) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield cluster, client


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
    with pytest.raises(PayloadError, match="bytes where .* are expected"):
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
            with RemoteModel(service.url, saved_classifier, key_dir=key_dir, timeout=TIMEOUT) as model:
                predicted = model.predict(rows)
        np.testing.assert_array_equal(predicted, classifier.predict(rows))
        assert _run_tasks(stream), "the service ran the batch itself, not on the cluster"
    finally:
        service.stop()


def test_a_worker_lost_during_a_run_costs_only_its_chunks(own_cluster, saved_classifier, fhe_client, classifier,
                                                          rows):
    _, dask_client = own_cluster
    X = np.tile(rows, (5, 1))  # 40 samples: 4 chunks of 10
    payload, keys = fhe_client.encrypt(X), fhe_client.evaluation_keys()
    with Server(saved_classifier, dask=dask_client) as dask_server:
        # every worker loads the model and keys first: the chunks then depend on no shipped data,
        # whose loss with the victim would cancel the survivor's chunks as well
        dask_server.run(fhe_client.encrypt(X[:4]), keys)
        assert all(cache["keys"] for cache in dask_client.run(worker_cache_info).values())
        before = _samples_run(dask_client)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(dask_server.run, payload, keys)
            victim = _kill_a_worker_running_a_chunk(dask_client)  # its nanny starts another worker
            # certain: the victim died with a chunk of the batch it had not answered
            assert not running.done()
            outputs = running.result(timeout=TIMEOUT)
    np.testing.assert_array_equal(fhe_client.decrypt(outputs), classifier.predict(X))
    assert victim not in dask_client.scheduler_info()["workers"]
    # the living workers ran no sample twice: the survivor's chunks were not run again
    after = _samples_run(dask_client)
    assert sum(after[worker] - before.get(worker, 0) for worker in after) <= len(X)


def _kill_a_worker_running_a_chunk(dask_client, timeout: float = 60.0) -> str:
    """Kill a worker while it runs a chunk of the batch; its address.

    The worker looks at its tasks and kills itself in its event loop, which is the one
    that would send a chunk's result to the scheduler: the chunk it runs cannot finish
    in between.
    """
    def kill_if_running_a_chunk(dask_worker) -> bool:
        if any(task.state == "executing" and str(key).startswith(TASK_PREFIX)
               for key, task in dask_worker.state.tasks.items()):
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in dask_client.processing().items():
            if any(str(key).startswith(TASK_PREFIX) for key in keys):
                answer = dask_client.run(kill_if_running_a_chunk, workers=[worker], on_error="return")
                if answer.get(worker) is not False:  # no answer: the connection died with the worker
                    _wait_until_gone(dask_client, worker, deadline)
                    return worker
        time.sleep(0.02)
    pytest.fail("no worker ran a chunk")


def _wait_until_gone(dask_client, worker: str, deadline: float) -> None:
    while worker in dask_client.scheduler_info()["workers"]:
        if time.monotonic() > deadline:
            pytest.fail(f"the scheduler did not notice the death of {worker}")
        time.sleep(0.02)


def _die_on_receiving_data(dask_worker) -> None:
    """Make this worker kill itself when data is sent to it, before it answers: a worker lost in
    the middle of a transfer. The worker kills itself, so no process id is held and reused."""
    async def update_data(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    dask_worker.handlers["update_data"] = update_data


@pytest.mark.parametrize("lost_during", ["keys", "artefact"])
def test_a_worker_lost_while_the_data_is_shipped_costs_a_retry(lost_during, saved_classifier, own_cluster, fhe_client,
                                                               monkeypatch, rows):
    """The worker receiving the keys (or then the artefact) dies during the transfer."""
    cluster, dask_client = own_cluster
    dask_client.wait_for_workers(2, timeout=60)
    victim, keeper = sorted(dask_client.scheduler_info()["workers"])
    dask_client.run(_die_on_receiving_data, workers=[victim])
    scatter_to_workers = distributed.scheduler.scatter_to_workers  # the scheduler runs in this process
    transfers: list[str] = []

    async def to_a_dying_worker(workers, data, rpc):
        transfers.append(next(iter(data)))
        if len(transfers) == 1:  # the keys: to the victim, or to the keeper so that the victim holds none
            return await scatter_to_workers([victim if lost_during == "keys" else keeper], data, rpc=rpc)
        if len(transfers) == 2 and lost_during == "artefact":
            return await scatter_to_workers([victim], data, rpc=rpc)
        return await scatter_to_workers(workers, data, rpc=rpc)

    monkeypatch.setattr(distributed.scheduler, "scatter_to_workers", to_a_dying_worker)
    # a failing connection to the dead worker fails in seconds, not after the default 30
    monkeypatch.setattr(cluster.scheduler.rpc, "timeout", 3)
    payload, keys = fhe_client.encrypt(rows[:4]), fhe_client.evaluation_keys()
    try:
        with Server(saved_classifier, dask=dask_client) as server:  # a server that has shipped nothing yet
            outputs = server.run(payload, keys)
            # at least: on a loaded machine the scheduler may also drop a slow worker, and its data with it
            assert server.cluster.shipping_failures >= 1 and server.cluster.shipped >= 2
        local = Server(saved_classifier).run(payload, keys)
        for on_cluster, here in zip(fhe_client.decrypt_raw(outputs), fhe_client.decrypt_raw(local), strict=True):
            np.testing.assert_array_equal(on_cluster, here)
        assert len(transfers) >= 3  # keys, artefact and the one tried again
        _wait_until_gone(dask_client, victim, time.monotonic() + 30)  # it died, not merely timed out
    finally:
        monkeypatch.undo()


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


# ---------------------------------------------------------------- TLS

def _certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A self-signed CA and a certificate it signs for 127.0.0.1 (the scheduler, the
    workers and the client present the same one): the files of the CA, the certificate
    and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now, hour = datetime.datetime.now(datetime.timezone.utc), datetime.timedelta(hours=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(subject(f"{name} CA")).issuer_name(subject(f"{name} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - hour).not_valid_after(now + hour)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    certificate = (x509.CertificateBuilder().subject_name(subject(name)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - hour).not_valid_after(now + hour)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    files = folder / f"{name}-ca.pem", folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


def _security(ca: Path, certificate: Path, key: Path) -> "distributed.Security":
    files = dict(tls_ca_file=str(ca))
    for role in ("client", "scheduler", "worker"):
        files[f"tls_{role}_cert"], files[f"tls_{role}_key"] = str(certificate), str(key)
    return distributed.Security(require_encryption=True, **files)


async def _connect(address: str, security: "distributed.Security") -> None:
    """Open and close a connection to ``address`` as a client with ``security`` would, with its handshake."""
    comm = await distributed.comm.connect(address, timeout=3, **security.get_connection_args("client"))
    await comm.close()


def test_the_cluster_connection_can_require_tls(saved_classifier, fhe_client, rows, tmp_path):
    pytest.importorskip("cryptography")
    security = _security(*_certificates(tmp_path, "cluster"))
    payload, keys = fhe_client.encrypt(rows[:3]), fhe_client.evaluation_keys()
    local = fhe_client.decrypt_raw(Server(saved_classifier).run(payload, keys))
    # one worker thread in this process: its connections to the scheduler are TLS all the same
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls",
                                  security=security, host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.ERROR) as tls_cluster:
        address = tls_cluster.scheduler_address
        assert address.startswith("tls://")
        assert all(worker.startswith("tls://") for worker in tls_cluster.scheduler.workers)
        with distributed.Client(address, security=security, set_as_default=False) as client:
            with Server(saved_classifier, dask=client) as server:
                outputs = server.run(payload, keys)
        for on_cluster, here in zip(fhe_client.decrypt_raw(outputs), local, strict=True):
            np.testing.assert_array_equal(on_cluster, here)

        # given the address, the runner makes its client with the certificates, and closes it
        runner = ClusterRunner(address, saved_classifier / "server.zip", "fingerprint", security=security)
        try:
            assert runner.threads() == 1 and runner.client.security is security
        finally:
            runner.close()
        assert runner.client.status == "closed"
        with pytest.raises(TypeError, match="a distributed.Client has its own"):
            ClusterRunner(client, saved_classifier / "server.zip", "fingerprint", security=security)

        # without the certificates, or with another CA's, no connection; nor in plain TCP. Tried at
        # the comm level: a Client that failed to connect, collected later inside another Client's
        # start, deadlocks distributed's loop runner
        asyncio.run(_connect(address, security))  # with the certificates, the same check connects
        strangers = [distributed.Security(), _security(*_certificates(tmp_path, "stranger"))]
        for stranger in strangers:
            with pytest.raises((OSError, TypeError, ValueError)):
                asyncio.run(_connect(address, stranger))
        with pytest.raises(OSError):
            asyncio.run(_connect(address.replace("tls://", "tcp://"), distributed.Security()))
