"""``Client``: keys, encryption and decryption; the only place the secret key exists."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from concrete import fhe

from . import container
from .artifacts import CLIENT_FILE, PathLike, check_versions, read_artifact, verified_fingerprint, versions
from .clientside import ClientModel
from .security import check_security
from .container import PayloadError
from .wire import pack_values, unpack_values


class Client:
    """The data owner's side of a deployed model.

    Parameters
    ----------
    path_or_zip : str or os.PathLike
        The folder written by ``save`` or its ``client.zip``.
    key_dir : str or os.PathLike, optional
        Where the secret key is kept: generated there once, reloaded by later clients
        with the same folder. Without it, keys live in memory only.
    fingerprint : str, optional
        The model the artefact must be (``fingerprint("model/")``, from its owner): pins
        the encryption parameters and the model's clear ends.

    Notes
    -----
    Before any parser reads the artefact, its fingerprint is recomputed from its bytes and
    compared with its header's (and with ``fingerprint``); then its concrete-python
    version must match the installed one (major.minor), and its encryption parameters
    must reach 128-bit security (``check_security``). Each refusal is a ``PayloadError``.

    Examples
    --------
    >>> client = Client("model/", key_dir="keys/")          # doctest: +SKIP
    >>> client.keygen()                                    # doctest: +SKIP
    >>> payload = client.encrypt(X_test[:5])               # doctest: +SKIP
    >>> client.decrypt(Server("model/").run(payload, client.evaluation_keys()))  # doctest: +SKIP
    """

    def __init__(self, path_or_zip: Union[PathLike, bytes], key_dir: Optional[PathLike] = None,
                 fingerprint: Optional[str] = None):
        data = path_or_zip if isinstance(path_or_zip, bytes) else read_artifact(path_or_zip, CLIENT_FILE).read_bytes()
        self.header, members = container.unpack(data, "client", max_bytes=1 << 30)
        # hashed before any parser (json, np.load, concrete) reads a member
        self.fingerprint: str = verified_fingerprint(self.header, members)
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise PayloadError(f"the client artefact is model {self.fingerprint}, not the pinned model {fingerprint}: "
                               "it is another model, or the model was saved again; ask its owner for the artefact "
                               "or the fingerprint of the model you mean to use")
        check_versions(self.header.get("versions"), "the client artefact")
        check_security(members["client.specs.json"])
        self.model = ClientModel.from_bytes(members)
        self.specs = fhe.ClientSpecs.deserialize(members["client.specs.json"])
        self.key_dir = Path(key_dir) if key_dir is not None else None
        self._client = fhe.Client(self.specs, keyset_cache_directory=self._keyset_dir())

    def _keyset_dir(self) -> Optional[Path]:
        if self.key_dir is None:
            return None
        # one key set per model, so that a key_dir can serve several models
        folder = self.key_dir / f"keyset-{self.fingerprint[:16]}"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)
        return folder

    def keygen(self) -> None:
        """Generate the keys, or reload them from ``key_dir``; cheap once done."""
        self._client.keygen()

    def evaluation_keys(self) -> bytes:
        """The public evaluation keys for the server (compressed), tagged with the model."""
        self.keygen()
        keys = self._client.evaluation_keys.serialize()
        return container.pack("evaluation_keys", self.fingerprint, {"keys": keys}, versions=versions())

    def encrypt(self, *X) -> bytes:
        """A batch of samples: checked, quantized and clipped as ``predict`` does, then encrypted.

        Returns the payload for ``Server.run`` (compressed ciphertexts, one per sample and input).
        """
        return self.encrypt_quantized(*self.model.quantize(*X))

    def encrypt_quantized(self, *q: np.ndarray) -> bytes:
        """A batch of inputs quantized already (``QuantizedModule.quantize_input``'s integers), encrypted.

        Nothing is checked or clipped: integers outside the circuit's inputs are the caller's error.
        """
        self.keygen()
        samples = []
        for i in range(q[0].shape[0]):
            encrypted = self._client.encrypt(*(x[i : i + 1] for x in q))
            encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
            samples.append([value.serialize() for value in encrypted])
        return pack_values("inputs", self.fingerprint, samples)

    def decrypt_raw(self, payload: bytes) -> tuple[np.ndarray, ...]:
        """The circuit's integer outputs, stacked over the batch."""
        self.keygen()
        samples = unpack_values(payload, "outputs", self.fingerprint)
        rows = []
        for values in samples:
            result = self._client.decrypt(*(fhe.Value.deserialize(v) for v in values))
            rows.append(result if isinstance(result, tuple) else (result,))
        if not rows:
            raise ValueError("the result holds no sample")
        return tuple(np.concatenate([np.asarray(r[k]).reshape(1, *np.shape(r[k])[1:]) for r in rows])
                     for k in range(len(rows[0])))

    def decrypt(self, payload: bytes) -> np.ndarray:
        """What ``predict`` (or a module's ``forward``) gives for the encrypted rows."""
        return self.model.predict(self.decrypt_raw(payload))

    def decrypt_proba(self, payload: bytes) -> np.ndarray:
        """What a classifier's ``predict_proba`` gives for the encrypted rows."""
        return self.model.predict_proba(self.decrypt_raw(payload))
