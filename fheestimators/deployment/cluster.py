"""``Server(..., dask=...)``: the samples of a batch run on the workers of a dask cluster.

``Server`` imports this module only when it is given a cluster, so that dask's
``distributed`` stays an optional dependency (``pip install "fheestimators[dask]"``).

What travels to the workers is public: the server artefact (the circuit) and a client's
evaluation keys, each shipped once with ``Client.scatter`` to one worker and kept on the
cluster while the ``Server`` holds their futures, and the ciphertexts of each chunk.
The secret key never exists here. Each worker process loads the artefact once per model
and deserializes a key set once per client (``_WORKER_CACHE``); the keys are checked
by the ``Server`` (model fingerprint, exact size) before they are shipped, because
concrete-python can crash on keys of another circuit.

A batch is cut into about two chunks per worker thread. Each chunk is first sent
without the shipped data, for a worker that has loaded it; a worker that has not
answers so, and the chunk goes again to that worker with the data as a dependency,
which the worker fetches from a worker holding it. (Tasks that depend on the shipped
data would make the cluster copy it to their workers on every batch: by default dask's
active memory manager keeps a single replica of data no task waits for.)

A worker lost while the data is shipped costs a new attempt, to the workers still alive
(``SHIPPING_ATTEMPTS``). The data is not broadcast: the scheduler's replication waits
forever for a target worker that died during the copy, where a scatter to one worker
fails at once. A worker lost during a run costs the re-run of the chunks it held, not
the batch: the scheduler gives them to another worker, and data lost with its last
holder is shipped again.

The connection to the cluster is dask's: plain TCP unless the scheduler listens on
``tls://`` and the client is given a ``distributed.Security`` with its certificates.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Union

try:
    import distributed
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("Server(dask=...) needs dask's distributed: pip install 'fheestimators[dask]'") from error

from concrete import fhe

from .artifacts import read_server_header
from .container import PayloadError

__all__ = ["ClusterRunner", "run_chunk", "worker_cache_info"]

logger = logging.getLogger(__name__)

CHUNKS_PER_THREAD = 2
# task failures (an exception on a worker) retried per chunk; a worker dying mid-task
# is handled by the scheduler itself (distributed.scheduler.allowed-failures)
RETRIES = 2
# times a batch is resubmitted after the cluster lost the artefact or keys it needs
RESUBMISSIONS = 2
# scatters tried per artefact or key set when a worker is lost during the transfer, and the
# pause before the next one (times the attempt), in which the scheduler notices the loss
SHIPPING_ATTEMPTS = 3
SHIPPING_PAUSE = 0.5
# what a scatter raises when the worker it sends to is lost: CommClosedError and
# connection errors are OSErrors, and so is TimeoutError (no worker left to send to)
SHIPPING_ERRORS = (OSError,)
SCATTERED_KEY_SETS = 4
WORKER_KEY_SETS = 4
WORKER_SERVERS = 8
TASK_PREFIX = "fheestimators-run"
DONE, MISSING, REFUSED = "done", "missing", "refused"

Keys = Union[bytes, fhe.EvaluationKeys]


# ---------------------------------------------------------------- on the workers

class _WorkerCache:
    """Loaded artefacts and deserialized key sets of one worker process, least recently used first.

    Each entry is made once even when several threads of the worker ask for it at once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.servers: OrderedDict[str, fhe.Server] = OrderedDict()
        self.keys: OrderedDict[tuple[str, str], fhe.EvaluationKeys] = OrderedDict()
        self.loading: dict[Hashable, threading.Lock] = {}
        self.loads = {"servers": 0, "keys": 0, "samples": 0}

    def find(self, table: str, key: Hashable) -> Any:
        """The entry, or None."""
        entries = getattr(self, table)
        with self.lock:
            if key in entries:
                entries.move_to_end(key)
                return entries[key]
        return None

    def get(self, table: str, key: Hashable, make: Callable[[], Any], limit: int) -> Any:
        """The entry, made by ``make`` if it is missing."""
        entries = getattr(self, table)
        with self.lock:
            loading = self.loading.setdefault((table, key), threading.Lock())
        with loading:
            value = self.find(table, key)
            if value is not None:
                return value
            try:
                value = make()
            finally:
                with self.lock:
                    self.loading.pop((table, key), None)
            with self.lock:
                entries[key] = value
                self.loads[table] += 1
                while len(entries) > limit:
                    entries.popitem(last=False)
        return value

    def count(self, samples: int) -> None:
        with self.lock:
            self.loads["samples"] += samples


_WORKER_CACHE = _WorkerCache()


def _load_server(artefact: bytes, fingerprint: str) -> fhe.Server:
    try:
        folder: Optional[str] = distributed.get_worker().local_directory
    except ValueError:  # called outside a worker (a local cluster of threads in tests, say)
        folder = None
    fd, name = tempfile.mkstemp(prefix=f"fheestimators-server-{fingerprint[:12]}-", suffix=".zip", dir=folder)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(artefact)
        found = read_server_header(Path(name)).get("fingerprint")
        if found != fingerprint:
            raise PayloadError(f"the artefact shipped for model {fingerprint[:12]}... is of model {str(found)[:12]}...")
        return fhe.Server.load(name)
    finally:
        os.unlink(name)


def run_chunk(samples: list[list[bytes]], fingerprint: str, keys_digest: str, artefact: Optional[bytes] = None,
              keys: Optional[bytes] = None) -> tuple[str, Any]:
    """Run the circuit on a chunk of samples, on a worker.

    Without ``artefact`` and ``keys``, the worker uses those it has loaded before: tasks
    that do not depend on the shipped data do not make the cluster copy it to every
    worker again (dask keeps one replica of what is not waited for). Returns
    ``("done", outputs)``; ``("missing", address)`` when the worker lacks the model or
    keys and was not given them, with its address, for the chunk to come back to it with
    them; ``("refused", reason)`` for ciphertexts or keys it cannot read: a refusal is an
    answer, not a failure to retry.
    """
    server = _WORKER_CACHE.find("servers", fingerprint)
    evaluation_keys = _WORKER_CACHE.find("keys", (fingerprint, keys_digest))
    if (server is None and artefact is None) or (evaluation_keys is None and keys is None):
        try:
            address: Optional[str] = distributed.get_worker().address
        except ValueError:  # outside a worker
            address = None
        return MISSING, address
    if server is None:
        server = _WORKER_CACHE.get("servers", fingerprint, lambda: _load_server(artefact, fingerprint), WORKER_SERVERS)
    if evaluation_keys is None:
        try:
            evaluation_keys = _WORKER_CACHE.get("keys", (fingerprint, keys_digest),
                                                lambda: fhe.EvaluationKeys.deserialize(keys), WORKER_KEY_SETS)
        except RuntimeError as error:
            return REFUSED, f"the evaluation keys are damaged ({str(error).splitlines()[0]})"
    outputs = []
    for values in samples:
        try:
            args = [fhe.Value.deserialize(value) for value in values]
            result = server.run(*args, evaluation_keys=evaluation_keys)
        except (RuntimeError, ValueError) as error:
            return REFUSED, f"the ciphertexts are not this model's ({str(error).splitlines()[0]})"
        results = result if isinstance(result, tuple) else (result,)
        outputs.append([value.serialize() for value in results])
    _WORKER_CACHE.count(len(samples))
    return DONE, outputs


def worker_cache_info() -> dict:
    """What this worker process holds: models, key sets (by digest), how many of each it loaded
    and how many samples it ran."""
    cache = _WORKER_CACHE
    with cache.lock:
        return {"servers": list(cache.servers), "keys": [digest for _, digest in cache.keys],
                "loads": dict(cache.loads)}


# ---------------------------------------------------------------- on the Server's side

class ClusterRunner:
    """The ``Server``'s link to the cluster: ships artefact and keys once, runs batches in chunks.

    Parameters
    ----------
    dask : distributed.Client or str
        A client, or the address of a scheduler to which a client is made (and closed
        by ``close``).
    artefact : pathlib.Path
        The ``server.zip``.
    fingerprint : str
        Its model's fingerprint.
    security : distributed.Security, optional
        The certificates of the client made for an address (a ``tls://`` scheduler).
        Without it, that client takes dask's configuration
        (``distributed.comm.tls.*``, e.g. from ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``).
        A client given as ``dask`` has its own.
    """

    def __init__(self, dask: Union["distributed.Client", str], artefact: Path, fingerprint: str,
                 security: Optional["distributed.Security"] = None):
        if isinstance(dask, str):
            self.client = distributed.Client(dask, set_as_default=False, security=security)
            self._owns_client = True
        elif isinstance(dask, distributed.Client):
            if security is not None:
                raise TypeError("security is for a scheduler address: a distributed.Client has its own")
            self.client = dask
            self._owns_client = False
        else:
            raise TypeError(f"dask must be a distributed.Client or a scheduler address, not {type(dask).__name__}")
        self.artefact_path = artefact
        self.fingerprint = fingerprint
        self.shipped = 0  # scatters made: one for the artefact, one per key set, unless the cluster loses them
        # bytes scattered, by kind: each scatter sends one copy, which workers fetch from each other
        self.shipped_bytes = {"artefact": 0, "keys": 0}
        self.shipping_failures = 0  # scatters that failed and were tried again, a lost worker each
        self._artefact: Optional[distributed.Future] = None
        self._keys: OrderedDict[Hashable, tuple[str, distributed.Future, Keys]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release what was shipped; close the client if this runner made it."""
        with self._lock:
            self._artefact = None
            self._keys.clear()
        if self._owns_client:
            self.client.close()

    def _scatter(self, data: bytes, kind: str) -> "distributed.Future":
        """Ship ``data`` to one worker, trying others if the worker is lost during the transfer.

        Not broadcast: a broadcast waits forever for a copy to a worker lost meanwhile.
        A worker that needs the data fetches it from one that holds it (``run``).
        """
        for attempt in range(1, SHIPPING_ATTEMPTS + 1):
            try:
                [future] = self.client.scatter([data])
            except SHIPPING_ERRORS as error:
                self.shipping_failures += 1
                if attempt == SHIPPING_ATTEMPTS:
                    raise RuntimeError(f"shipping the {kind} to the cluster failed {attempt} times: "
                                       "are its workers dying?") from error
                logger.warning("shipping the %s to the cluster failed (%s: %s): trying again",
                               kind, type(error).__name__, error)
                time.sleep(SHIPPING_PAUSE * attempt)
                continue
            self.shipped += 1
            self.shipped_bytes[kind] += len(data)
            return future
        raise AssertionError("unreachable")  # pragma: no cover

    def _shipped_artefact(self) -> "distributed.Future":
        with self._lock:
            if self._artefact is None or self._artefact.status != "finished":
                self._artefact = self._scatter(self.artefact_path.read_bytes(), "artefact")
            return self._artefact

    def _shipped_keys(self, evaluation_keys: Keys, check: Callable[[Keys], bytes]) -> tuple[str, "distributed.Future"]:
        # bytes by value; a key object by identity, kept alive by its entry so that its id stays its own
        name = evaluation_keys if isinstance(evaluation_keys, bytes) else ("object", id(evaluation_keys))
        with self._lock:
            entry = self._keys.get(name)
            if entry is not None and entry[1].status == "finished":
                self._keys.move_to_end(name)
                return entry[0], entry[1]
            data = check(evaluation_keys)  # before any worker sees them
            digest = hashlib.sha256(data).hexdigest()
            future = self._scatter(data, "keys")
            self._keys[name] = (digest, future, evaluation_keys)
            self._keys.move_to_end(name)
            while len(self._keys) > SCATTERED_KEY_SETS:
                self._keys.popitem(last=False)
            return digest, future

    def threads(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def chunks(self, samples: list) -> list[list]:
        """About ``CHUNKS_PER_THREAD`` chunks per worker thread, in order, of at least one sample."""
        n_chunks = max(1, min(len(samples), CHUNKS_PER_THREAD * self.threads()))
        size = -(-len(samples) // n_chunks)
        return [samples[start : start + size] for start in range(0, len(samples), size)]

    def run(self, samples: list[list[bytes]], evaluation_keys: Keys,
            check: Callable[[Keys], bytes]) -> list[list[bytes]]:
        """The outputs of every sample, in order."""
        chunks = self.chunks(samples)
        results: list[Optional[list[list[bytes]]]] = [None] * len(chunks)
        for _ in range(RESUBMISSIONS + 1):
            self._run_chunks(chunks, results, evaluation_keys, check)
            if all(result is not None for result in results):
                return [outputs for result in results for outputs in result]
        raise RuntimeError(f"the cluster lost the model or the evaluation keys {RESUBMISSIONS + 1} times "
                           "during one batch: are its workers dying?")

    def _run_chunks(self, chunks: list[list[list[bytes]]], results: list, evaluation_keys: Keys,
                    check: Callable[[Keys], bytes]) -> None:
        """Fill in the missing ``results``; chunks that lost their shipped data stay None."""
        digest, keys = self._shipped_keys(evaluation_keys, check)  # refused keys ship nothing
        artefact = self._shipped_artefact()
        options = dict(fingerprint=self.fingerprint, keys_digest=digest, retries=RETRIES, pure=False)
        todo = [i for i, result in enumerate(results) if result is None]
        # first without the shipped data: workers that loaded it need no copy
        futures = self.client.map(run_chunk, [chunks[i] for i in todo], key=TASK_PREFIX, **options)
        chunk_of = {future.key: i for future, i in zip(futures, todo)}
        running = distributed.as_completed(futures, loop=self.client.loop)
        for future in running:
            i = chunk_of.pop(future.key)
            try:
                status, value = future.result()
            except CancelledError:
                continue  # the cluster lost the artefact or the keys with their last holder: shipped again
            if status == MISSING:
                # back to the worker that lacks the data, which fetches it from one that holds it
                # (by default dask would run the chunk where the data is); another if it is lost
                where = dict(workers=[value], allow_other_workers=True) if value else {}
                again = self.client.submit(run_chunk, chunks[i], artefact=artefact, keys=keys,
                                           key=f"{TASK_PREFIX}-{uuid.uuid4().hex}", **where, **options)
                chunk_of[again.key] = i
                running.add(again)
            elif status == REFUSED:
                raise PayloadError(value)
            else:
                results[i] = value
