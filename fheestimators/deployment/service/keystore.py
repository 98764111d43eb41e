"""``KeyStore``: the evaluation keys clients uploaded to a service, on disk.

Each upload gets a folder of its own, named by a random client id, holding the model's
fingerprint, the keys and the SHA-256 of the client's token. The folder is the whole
state: a restart finds every client again. Nothing is ever overwritten, so one client
cannot replace another's keys, and a failed upload leaves no client that can
authenticate. The store is bounded (``capacity``), forgets key sets unused for a time
(``expire``), lets a client delete its own, and keeps the digests of keys that crashed
an evaluator (``quarantine``) so that the same bytes are refused at once next time.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Optional, Union

from ..artifacts import _write_atomically

__all__ = ["BadToken", "KeyStore", "KeyStoreError", "Quarantined", "StoreFull", "UnknownClient"]

KEYS_FILE = "evaluation_keys"
FINGERPRINT_FILE = "fingerprint"
TOKEN_FILE = "token.sha256"
QUARANTINED_FILE = "quarantined"
QUARANTINE_DIR = "quarantine"
# secrets.token_urlsafe(16): 22 characters of the URL-safe base64 alphabet
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{22}")
DIGEST = re.compile(r"[0-9a-f]{64}")
# an upload that never got its token (a killed process) is garbage after this long
STALE_UPLOAD_S = 3600.0


class KeyStoreError(Exception):
    """A request the key store refuses."""


class UnknownClient(KeyStoreError, LookupError):
    """No client of this model has this id."""


class BadToken(KeyStoreError, PermissionError):
    """The token is not the one issued to this client."""


class Quarantined(KeyStoreError):
    """Keys that crashed or hung an evaluator: refused from then on."""


class StoreFull(KeyStoreError):
    """The store holds as many key sets or bytes as it may."""


class KeyStore:
    """Evaluation keys by client id, each client authenticated by a token only it holds.

    Parameters
    ----------
    root : str or os.PathLike
        The folder, created (readable by its owner only) if needed.
    max_clients, max_bytes : int, optional
        Capacity; ``reserve`` raises ``StoreFull`` beyond it.

    Notes
    -----
    Tokens are stored as their SHA-256 only: a copy of the folder does not let anyone
    run requests as a client. Files are written to a temporary name and renamed, keys
    before the token's hash, so readers see a client whole or not at all.
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"], max_clients: Optional[int] = None,
                 max_bytes: Optional[int] = None):
        self.root = Path(root)
        self.max_clients, self.max_bytes = max_clients, max_bytes
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / QUARANTINE_DIR).mkdir(mode=0o700, exist_ok=True)

    # ------------------------------------------------------------ adding
    def reserve(self, fingerprint: str, keys: Union[bytes, memoryview]) -> str:
        """Store ``keys`` for model ``fingerprint`` under a new id that cannot authenticate yet.

        ``activate`` gives it a token once the keys are checked; ``discard`` removes it.
        """
        n_clients, n_bytes = self.usage()
        if self.max_clients is not None and n_clients >= self.max_clients:
            raise StoreFull(f"the key store holds {n_clients} key sets, its limit: try later, once unused ones "
                            "expire, or ask the operator to raise --max-clients")
        if self.max_bytes is not None and n_bytes + len(keys) > self.max_bytes:
            raise StoreFull(f"the key store holds {n_bytes} bytes of keys and takes at most {self.max_bytes}: "
                            "try later, once unused ones expire, or ask the operator to raise --max-store-gb")
        folder, client_id = self._new_folder()
        _write_atomically(folder / FINGERPRINT_FILE, fingerprint.encode())
        _write_atomically(folder / KEYS_FILE, keys)
        _sync(folder)
        return client_id

    def activate(self, client_id: str) -> str:
        """The new token of a reserved client; shown here once, only its hash is kept."""
        token = secrets.token_urlsafe(32)
        folder = self._folder(client_id)
        # last: until this file exists the client cannot authenticate
        _write_atomically(folder / TOKEN_FILE, _digest(token).encode())
        _sync(folder)
        return token

    def add(self, fingerprint: str, keys: bytes) -> tuple[str, str]:
        """``reserve`` and ``activate`` in one: for keys checked by the caller."""
        client_id = self.reserve(fingerprint, keys)
        return client_id, self.activate(client_id)

    def discard(self, client_id: str) -> None:
        """Remove a client's folder, whatever state it is in."""
        shutil.rmtree(self._folder(client_id), ignore_errors=True)
        _sync(self.root)

    # ------------------------------------------------------------ using
    def check(self, client_id: str, token: Optional[str], fingerprint: Optional[str] = None) -> Path:
        """The keys file of ``client_id``, if ``token`` is its token.

        Raises ``UnknownClient`` for an id that is not a stored client (of the model
        ``fingerprint`` when given), ``BadToken`` for a missing or wrong token and
        ``Quarantined`` for a client whose keys crashed an evaluator.
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
        if (folder / QUARANTINED_FILE).exists():
            raise Quarantined(f"the keys or ciphertexts of client {client_id!r} crashed or hung the evaluator; "
                              "its keys are quarantined, refused from now on: generate a new key set and upload it")
        if fingerprint is not None and stored_fingerprint != fingerprint:
            raise UnknownClient(f"client {client_id!r} uploaded keys for model {stored_fingerprint[:12]}..., "
                                f"this service runs {fingerprint[:12]}...: download /client and upload new keys")
        return folder / KEYS_FILE

    def keys_file(self, client_id: str) -> Path:
        """Where a client's keys are, whether or not it can authenticate yet."""
        return self._folder(client_id) / KEYS_FILE

    def touch(self, client_id: str) -> None:
        """Record a use: ``expire`` counts idle time from the last one."""
        try:
            os.utime(self._folder(client_id) / KEYS_FILE)
        except FileNotFoundError:
            pass

    def delete(self, client_id: str, token: Optional[str]) -> None:
        """Remove a client at its own request (its token checked)."""
        try:
            self.check(client_id, token)
        except Quarantined:
            pass  # deleting quarantined keys is fine; their digest stays quarantined
        self.discard(client_id)

    def client_ids(self) -> list[str]:
        """The ids of the clients that can authenticate."""
        return sorted(path.parent.name for path in self.root.glob(f"*/{TOKEN_FILE}"))

    # ------------------------------------------------------------ bounds
    def usage(self) -> tuple[int, int]:
        """(key sets, bytes of keys) held, uploads in progress included."""
        folders = [path for path in self.root.iterdir() if CLIENT_ID.fullmatch(path.name)]
        sizes = [_size(folder / KEYS_FILE) for folder in folders]
        return len(folders), sum(sizes)

    def expire(self, ttl_s: float, now: Optional[float] = None) -> list[str]:
        """Remove key sets unused for ``ttl_s`` seconds, dead uploads and stray temporary files."""
        now = time.time() if now is None else now
        removed = []
        for folder in self.root.iterdir():
            if not CLIENT_ID.fullmatch(folder.name):
                continue
            complete = (folder / TOKEN_FILE).exists()
            last_use = max([_mtime(folder / KEYS_FILE), _mtime(folder)])
            if now - last_use > (ttl_s if complete else min(ttl_s, STALE_UPLOAD_S)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
            else:
                for temporary in folder.glob(".*"):
                    if now - _mtime(temporary) > STALE_UPLOAD_S:
                        temporary.unlink(missing_ok=True)
        if removed:
            _sync(self.root)
        return removed

    # ------------------------------------------------------------ quarantine
    def quarantine(self, digest: str, client_id: Optional[str] = None) -> None:
        """Refuse the keys of SHA-256 ``digest`` from now on, and the client that uploaded them."""
        if DIGEST.fullmatch(digest):
            (self.root / QUARANTINE_DIR / digest).touch()
            _sync(self.root / QUARANTINE_DIR)
        if client_id is not None:
            folder = self._folder(client_id)
            if folder.is_dir():
                (folder / QUARANTINED_FILE).touch()
                (folder / KEYS_FILE).unlink(missing_ok=True)  # kept no longer: nobody may use them
                _sync(folder)

    def is_quarantined(self, digest: str) -> bool:
        return bool(DIGEST.fullmatch(digest)) and (self.root / QUARANTINE_DIR / digest).exists()

    def digest_of(self, client_id: str) -> Optional[str]:
        """The SHA-256 of a client's stored keys, if it has any."""
        try:
            return keys_digest((self._folder(client_id) / KEYS_FILE).read_bytes())
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------ helpers
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


def keys_digest(keys: Union[bytes, memoryview]) -> str:
    """What the quarantine remembers keys by."""
    return hashlib.sha256(keys).hexdigest()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _sync(folder: Path) -> None:
    """fsync a folder, so that the renames and removals in it survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
