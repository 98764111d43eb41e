"""Evaluation keys an attacker crafts from valid ones, at the level of their Cap'n Proto framing.

Shared by the hostile-input tests and ``benchmarks/key_refusals.py``. Every function takes
and returns the raw bytes of ``EvaluationKeys.serialize()`` (the ``keys`` member of an
evaluation keys container).
"""
from __future__ import annotations

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
