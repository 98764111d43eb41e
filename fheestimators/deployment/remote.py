"""``RemoteModel``: a model behind ``fheestimators serve``, used like a local estimator.

Rows are encrypted here, computed on by the service and decrypted here: the service
never sees the data, the predictions or the secret key.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable, Optional, Union

import httpx
import numpy as np

from . import container
from .artifacts import PathLike, _write_atomically
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
        The folder written by ``save`` or its ``client.zip``. By default the service's
        is downloaded (and kept in ``key_dir``), checked to be the model it runs.
    key_dir : str or os.PathLike, optional
        Where the secret key, the downloaded artefact and the registration with the
        service (``remote.json``: client id and token) are kept, so that a later
        ``RemoteModel`` neither regenerates keys nor uploads them again. Without it all
        of this lives in memory only.
    token : str, optional
        The service's API token, if it requires one to upload keys.
    timeout : float, default=3600
        Seconds for one request: evaluation keys of real models are ~100 MB and a large
        batch takes minutes.
    batch_size : int, default=256
        Rows per request: the service takes a bounded body.

    Examples
    --------
    >>> model = RemoteModel("http://127.0.0.1:8000", key_dir="keys/")  # doctest: +SKIP
    >>> model.predict(X_test[:5])                                      # doctest: +SKIP
    """

    def __init__(self, url: str, client_dir_or_zip: Optional[Union[PathLike, bytes]] = None,
                 key_dir: Optional[PathLike] = None, token: Optional[str] = None,
                 timeout: float = 3600.0, batch_size: int = 256):
        self.url = url.rstrip("/")
        self.key_dir = Path(key_dir) if key_dir is not None else None
        self.batch_size = batch_size
        self.uploads = 0
        self._api_token = token
        # one lock for keys, registration and concrete-python's client: threads may share a model
        self._lock = threading.RLock()
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=30.0))
        try:
            self.fingerprint: str = self._checked(self._http.get("/health")).json()["fingerprint"]
            self.client = Client(self._client_artefact(client_dir_or_zip), key_dir=self.key_dir)
        except BaseException:
            self._http.close()
            raise
        if self.client.fingerprint != self.fingerprint:
            self._http.close()
            raise PayloadError(f"the client artefact is for model {self.client.fingerprint[:12]}..., the service at "
                               f"{self.url} runs {self.fingerprint[:12]}...: leave client_dir_or_zip out "
                               "to download its own")
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
        uploaded = self._register_once()
        response = self._post_predict(payload)
        if response.status_code == 404 and not uploaded:
            self._register()
            response = self._post_predict(payload)
        return self._checked(response).content

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

    def _post_predict(self, payload: bytes) -> httpx.Response:
        return self._http.post(f"/clients/{self.client_id}/predict", content=payload,
                               headers={"Authorization": f"Bearer {self._client_token}",
                                        "Content-Type": "application/octet-stream"})

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
            answer = self._checked(self._http.post("/keys", content=keys, headers=headers)).json()
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

    def _client_artefact(self, given: Optional[Union[PathLike, bytes]]) -> Union[PathLike, bytes]:
        """The given artefact, else the one kept in ``key_dir`` if it is the service's model, else a download."""
        if given is not None:
            return given
        cached = self.key_dir / CLIENT_CACHE if self.key_dir is not None else None
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if _fingerprint_of(data) == self.fingerprint:
                return data
        response = self._checked(self._http.get("/client"))
        data = response.content
        announced = response.headers.get("X-Model-Fingerprint")
        if announced != self.fingerprint or _fingerprint_of(data) != self.fingerprint:
            raise PayloadError(f"the client artefact from {self.url} is not for the model it runs "
                               f"({str(announced)[:12]}... announced, {self.fingerprint[:12]}... running): "
                               "it was probably updated meanwhile, try again")
        if cached is not None:
            self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomically(cached, data)
        return data

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
    try:
        header, _ = container.unpack(client_zip, "client", max_bytes=1 << 30)
    except PayloadError:
        return None
    return header.get("fingerprint")
