"""``Server``: runs the circuit on ciphertexts with a client's evaluation keys; holds no secret."""
from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Optional, Union

from concrete import fhe

from . import container
from .artifacts import SERVER_FILE, PathLike, check_versions, read_artifact, read_server_header
from .container import PayloadError
from .keyframing import check_framing
from .wire import pack_values, unpack_values

if TYPE_CHECKING:  # distributed is optional: imported by .cluster only when a cluster is given
    import distributed


class Server:
    """The compute side of a deployed model: ciphertexts in, ciphertexts out.

    Parameters
    ----------
    path_or_zip : str or os.PathLike
        The folder written by ``save`` or its ``server.zip``.
    max_samples : int, default=1024
        The most samples one ``run`` takes.
    n_workers : int, optional
        Samples run side by side in this process; the number of CPUs by default.
        Unused with ``dask``.
    dask : distributed.Client or str, optional
        Run the samples on a dask cluster instead of this process: a
        ``distributed.Client``, or the address of a scheduler (``"tcp://host:8786"``), to
        which the server makes a client of its own (closed by ``close``). Needs
        ``pip install "fheestimators[dask]"``. Each batch is cut into about two chunks per
        worker thread; the artefact and each client's evaluation keys are shipped to the
        workers once, and each worker loads them once. A worker lost during a run costs
        the re-run of its chunks. Only the artefact, evaluation keys and ciphertexts
        travel: the cluster sees no more than this server would.
    security : distributed.Security, optional
        TLS for the connection to a scheduler given by address (``"tls://host:8786"``);
        dask's own configuration by default.

    Notes
    -----
    Evaluation keys are checked (model fingerprint, concrete-python version, exact size
    and framing) before concrete-python reads them, but ``run`` reads them in this process:
    keys crafted to crash concrete-python crash it. For bytes from the network, use the
    service (``fheestimators serve``), which runs them in processes it supervises.
    The last few deserialized key sets are kept in memory, because reading a key set of
    hundreds of MB takes seconds.
    """

    def __init__(self, path_or_zip: PathLike, max_samples: int = 1024, n_workers: Optional[int] = None,
                 dask: Union["distributed.Client", str, None] = None,
                 security: Optional["distributed.Security"] = None):
        path = read_artifact(path_or_zip, SERVER_FILE)
        self.header = read_server_header(path)
        self.fingerprint: str = self.header["fingerprint"]
        self.max_samples = max_samples
        self.n_workers = n_workers or os.cpu_count() or 1
        self._keys: OrderedDict[bytes, fhe.EvaluationKeys] = OrderedDict()
        self._lock = threading.Lock()
        if dask is None:
            self.cluster = None
            self._server = fhe.Server.load(path)
        else:
            from .cluster import ClusterRunner  # here: distributed is an optional dependency

            # the workers load the circuit; this process only checks and ships
            self.cluster = ClusterRunner(dask, path, self.fingerprint, security=security)
            self._server = None

    def close(self) -> None:
        """Release the cluster's copies of the artefact and keys; close the dask client made here."""
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def check_client(self, client_fingerprint: str) -> None:
        """Refuse a client artefact saved with another model than this server's."""
        if client_fingerprint != self.fingerprint:
            raise PayloadError(f"the client artefact is for model {client_fingerprint[:12]}..., this server runs "
                               f"{self.fingerprint[:12]}...: use the client.zip saved with this server.zip")

    def check_evaluation_keys(self, data: Union[bytes, memoryview, mmap.mmap]) -> bytes:
        """The serialized keys in ``Client.evaluation_keys()``, checked to be this model's.

        Checked (model, concrete-python version, exact size, a framing that covers exactly
        those bytes: ``check_framing``) before concrete-python reads them;
        ``load_evaluation_keys`` also reads them. ``data`` may be a mapped file.
        """
        expected = self.header["evaluation_keys_bytes"]
        header, members = container.unpack(data, "evaluation_keys", self.fingerprint, max_bytes=expected + (1 << 20),
                                           max_members=1, expected_sizes={"keys": expected})
        check_versions(header.get("versions"), "the evaluation keys")
        check_framing(members["keys"])
        return members["keys"]

    def _checked_size(self, keys: bytes) -> bytes:
        expected = self.header["evaluation_keys_bytes"]
        if len(keys) != expected:
            raise PayloadError(f"the evaluation keys have {len(keys)} bytes where this model's have {expected}: "
                               "they were made for another model or are damaged")
        return keys

    def _key_bytes(self, evaluation_keys: Union[bytes, fhe.EvaluationKeys]) -> bytes:
        """What the cluster's workers deserialize: checked keys only."""
        if isinstance(evaluation_keys, fhe.EvaluationKeys):
            return self._checked_size(evaluation_keys.serialize())
        return self.check_evaluation_keys(evaluation_keys)

    def load_evaluation_keys(self, data: bytes) -> fhe.EvaluationKeys:
        """Evaluation keys from ``Client.evaluation_keys()``, checked to be this model's."""
        keys = self.check_evaluation_keys(data)
        try:
            return fhe.EvaluationKeys.deserialize(keys)
        except RuntimeError as error:
            raise PayloadError(f"the evaluation keys are damaged ({str(error).splitlines()[0]})") from None

    def _cached_keys(self, data: bytes) -> fhe.EvaluationKeys:
        # the payload's own bytes identify it: equal bytes, equal keys
        with self._lock:
            keys = self._keys.get(data)
            if keys is not None:
                self._keys.move_to_end(data)
                return keys
        keys = self.load_evaluation_keys(data)
        with self._lock:
            self._keys[data] = keys
            while len(self._keys) > 4:
                self._keys.popitem(last=False)
        return keys

    def _samples(self, encrypted: bytes) -> list[list[bytes]]:
        """The ciphertexts of each sample, checked against this model (count and sizes)."""
        return unpack_values(encrypted, "inputs", self.fingerprint, n_args=self.header["n_inputs"],
                             sizes=self.header["input_bytes"], max_samples=self.max_samples)

    def run(self, encrypted: bytes, evaluation_keys: Union[bytes, fhe.EvaluationKeys]) -> bytes:
        """Run the circuit on every sample of ``encrypted`` (from ``Client.encrypt``).

        Returns the encrypted outputs for ``Client.decrypt``. Raises ``PayloadError`` (a
        ``ValueError``) for bytes that are not this model's ciphertexts or keys.

        With ``dask``, give the keys' bytes rather than a key object: the bytes are what
        the workers get, and an object is serialized on each run unless it is the one of
        a previous run.
        """
        if self.cluster is not None:
            samples = self._samples(encrypted)
            return pack_values("outputs", self.fingerprint, self.cluster.run(samples, evaluation_keys, self._key_bytes))
        keys = (evaluation_keys if isinstance(evaluation_keys, fhe.EvaluationKeys)
                else self._cached_keys(evaluation_keys))
        samples = self._samples(encrypted)

        def one(values: list[bytes]) -> list[bytes]:
            try:
                args = [fhe.Value.deserialize(value) for value in values]
                result = self._server.run(*args, evaluation_keys=keys)
            except (RuntimeError, ValueError) as error:
                raise PayloadError(f"the ciphertexts are not this model's ({str(error).splitlines()[0]})") from None
            results = result if isinstance(result, tuple) else (result,)
            return [value.serialize() for value in results]

        # concrete-python's runtime releases the GIL: samples run side by side
        with ThreadPoolExecutor(max(1, min(self.n_workers, len(samples)))) as pool:
            outputs = list(pool.map(one, samples))
        return pack_values("outputs", self.fingerprint, outputs)
