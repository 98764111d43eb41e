"""``RemoteModel``: a model behind ``fheestimators serve``, used like a local estimator.

Rows are encrypted here, computed on by the service and decrypted here: the service
never sees the data, the predictions or the secret key.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import httpx
import numpy as np
from tqdm.auto import tqdm

from .artifacts import PathLike, _write_atomically, fingerprint
from .container import read_header
from .client import Client
from .container import PayloadError

__all__ = ["RemoteError", "RemoteModel"]

CLIENT_CACHE = "client.zip"
REGISTRATION = "remote.json"


class RemoteError(Exception):
    """The service refused a request; ``message`` is its reason (``detail``)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"the service answered {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class RemoteModel:
    """Predictions of a model served over HTTP, computed on encrypted rows.

    Parameters
    ----------
    url : str
        The service, e.g. ``"https://models.example.com:8000"``.
    client_dir_or_zip : str or os.PathLike, optional
        The folder written by ``save`` or its ``client.zip``, from the model's owner. The
        service must run that model.
    key_dir : str or os.PathLike, optional
        Where the secret key, the downloaded artefact and the registration with the
        service (``remote.json``: client id and token) are kept, so that a later
        ``RemoteModel`` neither regenerates keys nor uploads them again. Without it all
        of this lives in memory only.
    token : str, optional
        The service's API token, if it requires one to upload keys.
    timeout : float, default=3600
        Seconds for one request: evaluation keys of real models are ~100 MB and a
        synchronous batch takes minutes.
    batch_size : int, optional
        Rows per request; by default the most the service takes in one job. Batches of
        more rows than the service answers synchronously are sent to its job API and
        polled, with a progress bar; a busy service (429, 503) is retried after the wait
        it asks for, up to ``retries`` times.
    retries : int, default=20
        How many times a request refused for the service's load is sent again.
    fingerprint : str, optional
        The model's fingerprint, from its owner (``fingerprint("model/")`` or
        ``Client("model/").fingerprint`` where it was saved). Without
        ``client_dir_or_zip``, the service's client artefact is downloaded (and kept in
        ``key_dir``) and used only if it is this model.
    transport : httpx.BaseTransport, optional
        The HTTP transport, for tests (``httpx.MockTransport``) or custom networking.

    Notes
    -----
    Give ``client_dir_or_zip`` or ``fingerprint``, obtained from the model's owner by
    another channel than the service: the client artefact sets the encryption parameters
    and how inputs and outputs are read, so a service that chose it could weaken the
    encryption and read the data. Either pins the model; the service must run it.

    Examples
    --------
    >>> model = RemoteModel("http://127.0.0.1:8000", key_dir="keys/", fingerprint=fp)  # doctest: +SKIP
    >>> model.predict(X_test[:5])                                                      # doctest: +SKIP
    """

    def __init__(self, url: str, client_dir_or_zip: Optional[Union[PathLike, bytes]] = None,
                 key_dir: Optional[PathLike] = None, token: Optional[str] = None,
                 timeout: float = 3600.0, batch_size: Optional[int] = None, fingerprint: Optional[str] = None,
                 transport: Optional[httpx.BaseTransport] = None, retries: int = 20):
        if client_dir_or_zip is None and fingerprint is None:
            raise ValueError(
                "RemoteModel needs the model pinned: give client_dir_or_zip (the model's client.zip) or "
                "fingerprint=..., obtained from the model's owner, not from the service. The client artefact "
                "sets the encryption parameters: one chosen by the service could be weak enough for a malicious "
                "or compromised service to read your data. Where the model was saved, "
                "fheestimators.deployment.fingerprint('model/') (or Client('model/').fingerprint) gives it.")
        self.url = url.rstrip("/")
        self.key_dir = Path(key_dir) if key_dir is not None else None
        self.retries = retries
        self.uploads = 0
        self._api_token = token
        # one lock for keys, registration and concrete-python's client: threads may share a model
        self._lock = threading.RLock()
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=30.0),
                                  transport=transport)
        try:
            health = self._checked(self._http.get("/health")).json()
            self.fingerprint: str = health["fingerprint"]
            # what the service takes in one request, and in one job (older services: 256 rows, no jobs)
            self.max_samples: int = health.get("max_samples", 256)
            self.max_job_samples: int = health.get("max_job_samples", self.max_samples)
            self.batch_size = batch_size or self.max_job_samples
            if client_dir_or_zip is not None:
                self.client = Client(client_dir_or_zip, key_dir=self.key_dir, fingerprint=fingerprint)
                if self.client.fingerprint != self.fingerprint:
                    raise PayloadError(
                        f"the client artefact is for model {self.client.fingerprint[:12]}..., the service at "
                        f"{self.url} runs {str(self.fingerprint)[:12]}...: give the client.zip of the model it "
                        "runs (from the model's owner), or use a service that runs yours")
            else:
                self.client = self._pinned_client(fingerprint)
        except BaseException:
            self._http.close()
            raise
        registration = self._stored_registration()
        self.client_id: Optional[str] = registration.get("client_id")
        self._client_token: Optional[str] = registration.get("token")

    def predict(self, *X) -> np.ndarray:
        """What the model's ``predict`` gives for ``X``, computed by the service on encrypted rows."""
        return self._predict_with(self.client.decrypt, X)

    def predict_proba(self, *X) -> np.ndarray:
        """What a classifier's ``predict_proba`` gives for ``X``, computed on encrypted rows."""
        return self._predict_with(self.client.decrypt_proba, X)

    def run(self, payload: bytes) -> bytes:
        """The service's encrypted answer to ``payload`` (from ``Client.encrypt``).

        Uploads the evaluation keys first if the service does not have them, and once
        more if it has lost them (a key store wiped, another service at this address).
        """
        try:
            n_samples = read_header(payload, "inputs", self.fingerprint)[0].get("n_samples", 0)
        except PayloadError:
            n_samples = 0  # sent as it is: the service says what is wrong with it
        route = "jobs" if isinstance(n_samples, int) and n_samples > self.max_samples else "predict"
        uploaded = self._register_once()
        response = self._post(route, payload)
        if response.status_code == 404 and not uploaded:
            self._register()
            response = self._post(route, payload)
        answer = self._checked(response)
        return answer.content if route == "predict" else self._job_result(answer.json())

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _predict_with(self, decode: Callable[[bytes], np.ndarray], X: tuple) -> np.ndarray:
        n_rows = len(X[0]) if X else 0
        results = []
        for start in range(0, max(n_rows, 1), self.batch_size):
            batch = tuple(x[start : start + self.batch_size] for x in X)
            with self._lock:
                payload = self.client.encrypt(*batch)
            answer = self.run(payload)
            with self._lock:
                results.append(decode(answer))
        return results[0] if len(results) == 1 else np.concatenate(results)

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self._client_token}"}

    def _post(self, route: str, payload: bytes) -> httpx.Response:
        """``POST /clients/{id}/{route}``, sent again while the service says it is busy."""
        return self._patiently(lambda: self._http.post(
            f"/clients/{self.client_id}/{route}", content=payload,
            headers={**self._auth(), "Content-Type": "application/octet-stream"}))

    def _patiently(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        for _ in range(self.retries):
            response = request()
            if response.status_code not in (429, 503) or "Retry-After" not in response.headers:
                return response
            time.sleep(min(60.0, float(response.headers["Retry-After"])))
        return response

    def _job_result(self, job: dict) -> bytes:
        """Poll a submitted job until it ends, showing its progress; its encrypted result."""
        path = f"/clients/{self.client_id}/jobs/{job['job_id']}"
        with tqdm(total=job["total"], desc="encrypted samples", unit="sample", disable=None) as bar:
            wait = 0.2
            while job["status"] not in ("done", "failed", "cancelled"):
                time.sleep(wait)
                wait = min(5.0, wait * 1.5)
                job = self._checked(self._patiently(lambda: self._http.get(path, headers=self._auth()))).json()
                bar.update(job["done"] - bar.n)
        return self._checked(self._http.get(path + "/result", headers=self._auth())).content

    def register(self) -> bool:
        """Upload the evaluation keys now, unless this key folder is registered; whether it uploaded.

        ``predict`` does it on first use; calling it ahead (``fheestimators keygen --url``)
        moves the upload, ~100 MB for real models, out of the first prediction.
        """
        return self._register_once()

    def _register_once(self) -> bool:
        """Upload the evaluation keys unless registered; whether this call uploaded."""
        with self._lock:
            if self.client_id is not None:
                return False
            self._register()
            return True

    def _register(self) -> None:
        with self._lock:
            keys = self.client.evaluation_keys()
            headers = {"Content-Type": "application/octet-stream"}
            if self._api_token is not None:
                headers["Authorization"] = f"Bearer {self._api_token}"
            answer = self._checked(self._patiently(lambda: self._http.post("/keys", content=keys,
                                                                           headers=headers))).json()
            self.client_id, self._client_token = answer["client_id"], answer["token"]
            self.uploads += 1
            if self.key_dir is not None:
                record = {"url": self.url, "fingerprint": self.fingerprint,
                          "client_id": self.client_id, "token": self._client_token}
                # mkstemp makes the file readable by its owner only: the token is a credential
                _write_atomically(self.key_dir / REGISTRATION, json.dumps(record, indent=1).encode())

    def _stored_registration(self) -> dict:
        """The client id and token of an earlier upload of these keys to this service, if any."""
        if self.key_dir is None or not (self.key_dir / REGISTRATION).is_file():
            return {}
        try:
            record = json.loads((self.key_dir / REGISTRATION).read_text())
        except ValueError:
            return {}  # damaged: upload again, which rewrites it
        if not isinstance(record, dict):
            return {}
        # keys registered with another service, or for another model, are no use here
        same = record.get("url") == self.url and record.get("fingerprint") == self.fingerprint
        return record if same else {}

    def _pinned_client(self, pinned: str) -> Client:
        """The client of the model ``pinned``, from the artefact kept in ``key_dir`` or a download.

        Every artefact is verified to be ``pinned`` (its content hashes to it) before any
        parser reads it, and checked for security before it is kept or any key is generated.
        """
        if self.fingerprint != pinned:
            raise PayloadError(f"the service at {self.url} runs model {str(self.fingerprint)[:64]}, not the pinned "
                               f"model {pinned}: it serves another model (or a newer save of it); ask the model's "
                               "owner for the fingerprint of the model this service runs")
        cached = self.key_dir / CLIENT_CACHE if self.key_dir is not None else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if _fingerprint_of(data) == pinned:
                return Client(data, key_dir=self.key_dir, fingerprint=pinned)
        response = self._checked(self._http.get("/client"))
        try:
            client = Client(response.content, key_dir=self.key_dir, fingerprint=pinned)
        except PayloadError as error:
            raise PayloadError(f"the client artefact served by {self.url} is refused: {error}") from None
        if cached is not None:
            self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomically(cached, response.content)
        return client

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not isinstance(detail, str):
            detail = response.text[:500] or response.reason_phrase
        raise RemoteError(response.status_code, detail)


def _fingerprint_of(client_zip: bytes) -> Optional[str]:
    """The fingerprint the artefact's content hashes to, or None if it is not a sound client artefact."""
    try:
        return fingerprint(client_zip)
    except PayloadError:
        return None
