"""Evaluation keys an attacker crafts from valid ones, at the level of their Cap'n Proto framing.

Shared by the hostile-input tests and ``benchmarks/key_refusals.py``. Every function takes
and returns the raw bytes of ``EvaluationKeys.serialize()`` (the ``keys`` member of an
evaluation keys container).
"""
from __future__ import annotations

import json
import struct

# keys of this model's exact size whose framing does not describe their bytes
FRAMING_LIES = ["another model's keys cut or padded", "a segment declared 1 MB longer",
                "a segment declared 1 GB longer", "a segment declared 1 MB shorter", "too many segments"]


def segment_sizes(raw: bytes) -> list[int]:
    """The segment sizes (in 8-byte words) of serialized keys' framing."""
    return list(struct.unpack_from(f"<{struct.unpack_from('<I', raw)[0] + 1}I", raw, 4))


def framed(sizes: list[int], segments: bytes) -> bytes:
    """``segments`` behind a framing that declares ``sizes``, whether or not they match."""
    table = struct.pack(f"<{len(sizes) + 1}I", len(sizes) - 1, *sizes)
    return table + bytes(-len(table) % 8) + segments


def reframed(raw: bytes, size: int) -> bytes:
    """Keys of a smaller model grown to ``size`` bytes by one more segment of zeros: a framing that holds."""
    sizes = segment_sizes(raw)
    segments = raw[len(framed(sizes, b"")) :]
    table = len(framed([*sizes, 0], b""))
    padding = size - table - len(segments)
    return framed([*sizes, padding // 8], segments + bytes(padding))


def redeclared(raw: bytes, extra: int) -> bytes:
    """The same bytes, the framing declaring ``extra`` more (or fewer) in the second segment."""
    sizes = segment_sizes(raw)
    sizes[1] += extra // 8
    return framed(sizes, raw[len(framed(sizes, b"")) :])


def framing_lie(craft: str, ours: bytes, foreign: bytes) -> bytes:
    """The keys ``craft`` (one of ``FRAMING_LIES``) of the size of ``ours``, made of ``ours`` or ``foreign``."""
    if craft == "another model's keys cut or padded":  # the lead's attack
        return (foreign + bytes(len(ours)))[: len(ours)]
    if craft == "too many segments":
        return struct.pack("<I", 0xFFFF) + ours[4:]
    size = {"a segment declared 1 MB longer": 1 << 20, "a segment declared 1 GB longer": 1 << 30,
            "a segment declared 1 MB shorter": -(1 << 20)}[craft]
    return redeclared(ours, size)


def _target(raw: bytes, at: int) -> tuple[int, int]:
    """The byte offset a struct or list pointer at byte ``at`` points to, and the pointer word."""
    (word,) = struct.unpack_from("<Q", raw, at)
    offset = (word & 0xFFFFFFFF) >> 2
    offset -= (1 << 30) if offset >= 1 << 29 else 0
    return at + 8 + 8 * offset, word


def amplified(raw: bytes, copies: int) -> bytes:
    """Keys of the same size and a sound framing whose first bootstrap key's payload is ``copies`` pointers to it.

    concrete-python stores a key's payload as a list of byte chunks, each a pointer; the
    payload's one chunk lives in a segment of its own, reached by a far pointer. The list is
    moved into the end of that chunk's bytes (overwritten, nothing resized) and holds
    ``copies`` far pointers to the same chunk: Cap'n Proto reads each as a chunk, and
    concrete-python copies each (the chunk's size times ``copies``).
    """
    sizes = segment_sizes(raw)
    starts = [len(framed(sizes, b"")) + 8 * sum(sizes[:i]) for i in range(len(sizes))]
    root, _ = _target(raw, starts[0])
    bootstrap_keys, _ = _target(raw, root)  # a list of structs: a tag word, then the elements
    key = bootstrap_keys + 8  # the first key: no data words, pointers (info, payload)
    payload, _ = _target(raw, key + 8)
    chunks, _ = _target(raw, payload)  # a list of pointers to Data
    (far,) = struct.unpack_from("<Q", raw, chunks)
    assert far & 3 == 2, "concrete-python's layout changed: the chunk is not behind a far pointer"
    segment = far >> 32
    end = starts[segment] + 8 * sizes[segment]
    pad = end - 8 * (copies + 1)  # a landing pad, then the new list of pointers, at the end of the chunk's segment
    crafted = bytearray(raw)
    struct.pack_into("<Q", crafted, payload, 2 | ((pad - starts[segment]) // 8) << 3 | segment << 32)
    struct.pack_into("<Q", crafted, pad, 1 | 6 << 32 | copies << 35)  # offset 0: the list follows its pad
    struct.pack_into(f"<{copies}Q", crafted, pad + 8, *[far] * copies)
    return bytes(crafted)


def declaring(body: bytes, length: int) -> bytes:
    """An evaluation keys container whose header claims ``length`` bytes for its ``keys`` member, its bytes unchanged.

    The header's own length is rewritten with it: a longer claim in the same bytes would break the header's JSON.
    """
    (size,) = struct.unpack_from(">I", body, 8)
    header = json.loads(body[12 : 12 + size])
    header["members"] = [["keys", length]]
    text = json.dumps(header).encode()
    return body[:8] + struct.pack(">I", len(text)) + text + body[12 + size :]
