"""The bytes that travel: named members behind a JSON header, framed by lengths and read defensively.

Every artefact and payload of the deployment path is one of these, so one reader checks
what arrives from disk or the network. The layout (format version 2)::

    b"FHEESTIM"                       8 bytes of magic
    length of the header              4 bytes, big-endian unsigned
    header                            UTF-8 JSON object: "format", "kind", "fingerprint",
                                      "members" (a list of [name, length] pairs, in order)
                                      and the writer's other fields
    the members' bytes                concatenated in the order of "members", nothing after

Nothing is compressed (ciphertexts and keys do not compress) and nothing is pickled.

What ``unpack`` guarantees, for any bytes-like input of ``n`` bytes (``bytes``, ``bytearray``,
``memoryview``, ``mmap``: it is read through a ``memoryview``, never copied whole):

* the 12 bytes of the prefix are read first; a header longer than ``max_header_bytes``
  (1 MiB by default) or than the bytes that follow is refused before it is decoded;
* decoding and parsing the header allocates in proportion to its length ``h``: about 25
  bytes per byte at worst (a header of empty JSON objects), whatever lengths or counts it
  declares; deeper nesting than Python's recursion limit is refused;
* the whole header is then checked (format version, kind, fingerprint, a member list of at
  most ``max_members`` [name, length] pairs, unique names, lengths that sum to exactly the
  bytes after the header, ``max_bytes``, ``expected_sizes``) before any member is copied, so
  a refusal costs no member copy; every refusal is a ``PayloadError``;
* an accepted container's members are copied once each, at most ``n - 12 - h`` bytes in all.

So ``unpack`` allocates at most about ``n + 25 * min(n, max_header_bytes)`` bytes, all
bounded by limits known before reading: nothing is decompressed, and no length read from
the input is allocated before it is checked against the bytes actually there.
``read_header`` makes the same checks and returns the members' lengths, copying none.
"""
from __future__ import annotations

import json
import reprlib
import struct
from typing import Any, Mapping, Optional

FORMAT_VERSION = 2
MAGIC = b"FHEESTIM"
_PREFIX = struct.Struct(">8sI")
MAX_MEMBERS = 4096
MAX_HEADER_BYTES = 1 << 20
MAX_NAME_CHARS = 255
_ZIP_MAGIC = b"PK\x03\x04"


class PayloadError(ValueError):
    """Bytes that are not what they claim to be: malformed, another kind, another model."""


def pack(kind: str, fingerprint: str, members: Mapping[str, bytes], **fields) -> bytes:
    """A container of ``kind`` for the model ``fingerprint``, holding ``members``.

    ``fields`` are stored in the header and given back by ``unpack``.
    """
    members = dict(members)
    bad = [name for name in members if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS]
    if bad:
        raise ValueError(f"member names are strings of 1 to {MAX_NAME_CHARS} characters, not {_short(bad[0])}")
    header = {"format": FORMAT_VERSION, "kind": kind, "fingerprint": fingerprint, **fields,
              "members": [[name, len(data)] for name, data in members.items()]}
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    return b"".join([_PREFIX.pack(MAGIC, len(text)), text, *members.values()])


def read_header(data: Any, kind: str, fingerprint: Optional[str] = None, max_bytes: Optional[int] = None, *,
                max_members: Optional[int] = MAX_MEMBERS, max_header_bytes: Optional[int] = MAX_HEADER_BYTES,
                expected_sizes: Optional[Mapping[str, int]] = None) -> tuple[dict, dict[str, int]]:
    """The header of a container and the length of each member, checked as ``unpack`` does; copies no member."""
    with _byte_view(data, kind) as view:
        header, sizes, _ = _checked_header(view, kind, fingerprint, max_bytes, max_members, max_header_bytes,
                                           expected_sizes)
    return header, sizes


def unpack(data: Any, kind: str, fingerprint: Optional[str] = None, max_bytes: Optional[int] = None, *,
           max_members: Optional[int] = MAX_MEMBERS, max_header_bytes: Optional[int] = MAX_HEADER_BYTES,
           expected_sizes: Optional[Mapping[str, int]] = None) -> tuple[dict, dict[str, bytes]]:
    """Header and members of a container, refused with ``PayloadError`` unless it is sound.

    ``data`` is any bytes-like object (``bytes``, ``memoryview``, ``mmap``...): it is read
    through a view, and only the members returned are copied. ``fingerprint``, when given,
    must be the container's: FHE cannot tell ciphertexts or keys of one model from
    another's, so the header must. ``max_bytes`` caps the members' total (by default the
    input's length), ``max_members`` their number and ``max_header_bytes`` the header's
    length (``None``: only the input's length). ``expected_sizes`` maps names of members
    that must be there to their exact lengths. All are checked before any member is copied.
    """
    with _byte_view(data, kind) as view:
        header, sizes, start = _checked_header(view, kind, fingerprint, max_bytes, max_members, max_header_bytes,
                                               expected_sizes)
        members = {}
        for name, length in sizes.items():
            members[name] = bytes(view[start : start + length])
            start += length
    return header, members


def _byte_view(data: Any, kind: str) -> memoryview:
    """A flat view of the bytes of ``data``, released by the ``with`` block that uses it."""
    try:
        with memoryview(data) as outer:
            view = outer.cast("B") if outer.ndim != 1 or outer.format != "B" else outer[:]
    except (TypeError, ValueError):
        view = None
    if view is None or view.nbytes == 0:
        if view is not None:
            view.release()
        raise PayloadError(f"expected the bytes of a {kind} container, got an empty or non-bytes value")
    return view


def _checked_header(view: memoryview, kind: str, fingerprint: Optional[str], max_bytes: Optional[int],
                    max_members: Optional[int], max_header_bytes: Optional[int],
                    expected_sizes: Optional[Mapping[str, int]]) -> tuple[dict, dict[str, int], int]:
    """The header without its member list, the members' lengths in order, where their bytes start."""
    size = len(view)
    if size < _PREFIX.size or view[: len(MAGIC)] != MAGIC:
        if view[: len(_ZIP_MAGIC)] == _ZIP_MAGIC:
            raise PayloadError(
                f"not a {kind} container of this fheestimators: it is a zip, as containers of format version 1 "
                f"were; this fheestimators reads version {FORMAT_VERSION}: if it is one, save the model again "
                "with this version")
        raise PayloadError(f"not a {kind} container of fheestimators (no {MAGIC.decode()} mark at its start)")
    _, header_bytes = _PREFIX.unpack(view[: _PREFIX.size])
    start = _PREFIX.size + header_bytes
    if max_header_bytes is not None and header_bytes > max_header_bytes:
        raise PayloadError(f"not a {kind} container of fheestimators: its header declares {header_bytes} bytes, "
                           f"more than the {max_header_bytes} accepted")
    if start > size:
        raise PayloadError(f"not a {kind} container of fheestimators: its header declares {header_bytes} bytes, "
                           f"only {size - _PREFIX.size} follow (truncated or damaged)")
    try:
        header = json.loads(str(view[_PREFIX.size : start], "utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise PayloadError(f"the {kind} container is damaged: its header is not JSON: {_short(error)}") from None
    if not isinstance(header, dict):
        raise PayloadError(f"the {kind} container is damaged: its header is not an object")
    if type(header.get("format")) is not int or header["format"] != FORMAT_VERSION:
        raise PayloadError(
            f"the {kind} container has format version {_short(header.get('format'))}; this fheestimators "
            f"reads version {FORMAT_VERSION}: save the model again with this version")
    if header.get("kind") != kind:
        raise PayloadError(f"expected a {kind} container, got {_short(header.get('kind'))}")
    found = header.get("fingerprint")
    if not isinstance(found, str):
        raise PayloadError(f"the {kind} container is damaged: its header has no fingerprint")
    if fingerprint is not None and found != fingerprint:
        raise PayloadError(f"the {kind} was made for model {found[:12]}..., not for this model ({fingerprint[:12]}...)")
    sizes = _member_sizes(header.pop("members", None), kind, max_members, size - start)
    total = sum(sizes.values())
    if total != size - start:
        raise PayloadError(f"not a {kind} container of fheestimators: its header declares {total} bytes of members, "
                           f"{size - start} follow (truncated, padded or damaged)")
    limit = max_bytes if max_bytes is not None else size
    if total > limit:
        raise PayloadError(f"the {kind} container holds {total} bytes of members, more than the {limit} accepted")
    for name, expected in (expected_sizes or {}).items():
        if name not in sizes:
            raise PayloadError(f"the {kind} container lacks its member {name!r}")
        if sizes[name] != expected:
            raise PayloadError(f"the member {name!r} of the {kind} container has {sizes[name]} bytes where "
                               f"{expected} are expected: it was made for another model or is damaged")
    return header, sizes, start


def _member_sizes(entries: Any, kind: str, max_members: Optional[int], available: int) -> dict[str, int]:
    """``{name: length}`` from the header's member list, refused unless well formed and within ``available``."""
    if not isinstance(entries, list):
        raise PayloadError(f"the {kind} container is damaged: its header has no member list")
    if max_members is not None and len(entries) > max_members:
        raise PayloadError(f"the {kind} container holds {len(entries)} members; at most {max_members} are accepted "
                           "(split it into smaller ones)")
    sizes: dict[str, int] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and 0 < len(entry[0]) <= MAX_NAME_CHARS and type(entry[1]) is int and entry[1] >= 0):
            raise PayloadError(f"the {kind} container is damaged: {_short(entry)} is not a [name, length] member entry")
        if entry[0] in sizes:
            raise PayloadError(f"the {kind} container is damaged: it names the member {_short(entry[0])} twice")
        if entry[1] > available:
            raise PayloadError(f"not a {kind} container of fheestimators: its member {_short(entry[0])} declares "
                               f"{_short(entry[1])} bytes, only {available} follow (truncated or damaged)")
        sizes[entry[0]] = entry[1]
    return sizes


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 2, 4, 4, 40, 40, 40


def _short(value: Any) -> str:
    """A short ``repr`` of ``value`` (or message of an error), for messages about bytes of unknown shape."""
    if isinstance(value, BaseException):
        text = str(value).splitlines()[0] if str(value) else type(value).__name__
        return text if len(text) <= 80 else text[:77] + "..."
    return _REPR.repr(value)
