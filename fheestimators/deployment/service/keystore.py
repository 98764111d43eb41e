"""``KeyStore``: the evaluation keys clients uploaded to a service, on disk.

Each upload gets a folder of its own, named by a random client id, holding the model's
fingerprint, the keys and the SHA-256 of the client's token. The folder is the whole
state: several server processes share it without talking to each other, and a restart
finds every client again. Nothing is ever overwritten, so one client cannot replace
another's keys, and a failed upload leaves no client that can authenticate.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Optional, Union

from .artifacts import _write_atomically

__all__ = ["BadToken", "KeyStore", "KeyStoreError", "UnknownClient"]

KEYS_FILE = "evaluation_keys"
FINGERPRINT_FILE = "fingerprint"
TOKEN_FILE = "token.sha256"
# secrets.token_urlsafe(16): 22 characters of the URL-safe base64 alphabet
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{22}")


class KeyStoreError(Exception):
    """A request the key store refuses."""


class UnknownClient(KeyStoreError, LookupError):
    """No client of this model has this id."""


class BadToken(KeyStoreError, PermissionError):
    """The token is not the one issued to this client."""


class KeyStore:
    """Evaluation keys by client id, each client authenticated by a token only it holds.

    Parameters
    ----------
    root : str or os.PathLike
        The folder, created (readable by its owner only) if needed.

    Notes
    -----
    Tokens are stored as their SHA-256 only: a copy of the folder does not let anyone
    run requests as a client. Files are written to a temporary name and renamed, keys
    before the token's hash, so readers in other processes see a client whole or not at
    all.
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"]):
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, fingerprint: str, keys: bytes) -> tuple[str, str]:
        """Store ``keys`` (checked by the caller) for model ``fingerprint``.

        Returns
        -------
        (client_id, token) : tuple of str
            The token is shown here once; the store keeps only its hash.
        """
        folder, client_id = self._new_folder()
        token = secrets.token_urlsafe(32)
        _write_atomically(folder / FINGERPRINT_FILE, fingerprint.encode())
        _write_atomically(folder / KEYS_FILE, bytes(keys))
        # last: until this file exists the client cannot authenticate
        _write_atomically(folder / TOKEN_FILE, _digest(token).encode())
        return client_id, token

    def check(self, client_id: str, token: Optional[str], fingerprint: Optional[str] = None) -> Path:
        """The keys file of ``client_id``, if ``token`` is its token.

        Raises ``UnknownClient`` for an id that is not a stored client (of the model
        ``fingerprint`` when given) and ``BadToken`` for a missing or wrong token.
        """
        folder = self._folder(client_id)
        try:
            stored_hash = (folder / TOKEN_FILE).read_bytes()
            stored_fingerprint = (folder / FINGERPRINT_FILE).read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise UnknownClient(f"no client {client_id!r} here: upload evaluation keys to POST /keys first") from None
        if not token or not hmac.compare_digest(_digest(token).encode(), stored_hash):
            raise BadToken(f"wrong or missing token for client {client_id!r}: "
                           "send the token POST /keys returned, as 'Authorization: Bearer <token>'")
        if fingerprint is not None and stored_fingerprint != fingerprint:
            raise UnknownClient(f"client {client_id!r} uploaded keys for model {stored_fingerprint[:12]}..., "
                                f"this service runs {fingerprint[:12]}...: download /client and upload new keys")
        return folder / KEYS_FILE

    def client_ids(self) -> list[str]:
        """The ids of the clients that can authenticate."""
        return sorted(path.parent.name for path in self.root.glob(f"*/{TOKEN_FILE}"))

    def _folder(self, client_id: str) -> Path:
        # only ids of our own alphabet and length: no '..', '/' or absolute paths
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            raise UnknownClient(f"{str(client_id)[:40]!r} is not a client id: use the client_id POST /keys returned")
        return self.root / client_id

    def _new_folder(self) -> tuple[Path, str]:
        while True:
            client_id = secrets.token_urlsafe(16)
            try:
                # mkdir, not makedirs(exist_ok): it fails rather than share a folder
                os.mkdir(self.root / client_id, 0o700)
            except FileExistsError:
                continue
            return self.root / client_id, client_id


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
