"""The bytes that travel: a zip of named members with a JSON header, read defensively.

Every artefact and payload of the deployment path is one of these, so one reader checks
what arrives from disk or the network: sizes before reading (no zip bombs), a known
format version, the model's fingerprint, and the kind of content. No pickle anywhere.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Mapping, Optional

FORMAT_VERSION = 1
HEADER = "header.json"


class PayloadError(ValueError):
    """Bytes that are not what they claim to be: malformed, another kind, another model."""


def pack(kind: str, fingerprint: str, members: Mapping[str, bytes], **fields) -> bytes:
    """A container of ``kind`` for the model ``fingerprint``, holding ``members``."""
    header = {"format": FORMAT_VERSION, "kind": kind, "fingerprint": fingerprint, **fields}
    buffer = io.BytesIO()
    # stored, not deflated: ciphertexts and keys do not compress
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(HEADER, json.dumps(header, sort_keys=True))
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def unpack(data: bytes, kind: str, fingerprint: Optional[str] = None,
           max_bytes: Optional[int] = None) -> tuple[dict, dict[str, bytes]]:
    """Header and members of a container, refused with ``PayloadError`` unless it is sound.

    ``fingerprint``, when given, must be the container's: FHE cannot tell ciphertexts
    or keys of one model from another's, so the header must.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise PayloadError(f"expected the bytes of a {kind} container, got an empty or non-bytes value")
    try:
        archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise PayloadError(f"not a {kind} container of fheestimators ({error})") from None
    limit = max_bytes if max_bytes is not None else 4 * len(data) + (1 << 20)
    if sum(info.file_size for info in infos) > limit:
        raise PayloadError(f"the {kind} container unpacks to more than {limit} bytes")
    try:
        header = json.loads(archive.read(HEADER))
        members = {info.filename: archive.read(info) for info in infos if info.filename != HEADER}
    except KeyError:
        raise PayloadError(f"not a {kind} container of fheestimators (no header)") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, UnicodeDecodeError) as error:
        raise PayloadError(f"the {kind} container is damaged ({error})") from None
    if not isinstance(header, dict):
        raise PayloadError(f"the {kind} container's header is not an object")
    if header.get("format") != FORMAT_VERSION:
        raise PayloadError(
            f"the {kind} container has format version {header.get('format')!r}; this fheestimators "
            f"reads version {FORMAT_VERSION}: save the model again with this version")
    if header.get("kind") != kind:
        raise PayloadError(f"expected a {kind} container, got {header.get('kind')!r}")
    if fingerprint is not None and header.get("fingerprint") != fingerprint:
        raise PayloadError(
            f"the {kind} was made for model {str(header.get('fingerprint'))[:12]}..., "
            f"not for this model ({fingerprint[:12]}...)")
    return header, members
