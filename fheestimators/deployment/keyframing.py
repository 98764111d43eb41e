"""``check_framing``: refuse serialized evaluation keys whose framing does not describe their bytes, cheaply.

concrete-python serializes a key set as one Cap'n Proto message in the standard stream
framing: a little-endian uint32 holding the number of segments minus one, one uint32 per
segment giving its length in 8-byte words, zero padding to a multiple of 8 bytes, then
the segments. ``EvaluationKeys.deserialize`` trusts that table. Where it declares more
bytes than there are, Cap'n Proto skips the missing ones 8 KiB at a time and logs each
short read with a stack trace symbolized by a new ``addr2line`` process: seconds per MB
declared (see the design notes). Bytes it does not cover are ignored: another model's
smaller keys, padded, loaded and crashed the evaluator later. Reading the table costs
microseconds and parses nothing else.
"""
from __future__ import annotations

import struct
from typing import Union

from .container import PayloadError

__all__ = ["MAX_SEGMENTS", "check_framing"]

# Cap'n Proto's stream reader refuses messages of this many segments or more
MAX_SEGMENTS = 512
_WORD = 8


def check_framing(keys: Union[bytes, memoryview], what: str = "the evaluation keys") -> None:
    """Refuse ``keys`` unless their Cap'n Proto segment table describes exactly their bytes.

    Every key set concrete-python serializes passes: it writes one message and nothing
    after it. ``PayloadError`` says what the table declares against what is there.
    """
    size = len(keys)
    if size < _WORD:
        raise PayloadError(f"{what} are damaged: {size} bytes cannot hold a key set")
    (last,) = struct.unpack_from("<I", keys, 0)
    count = last + 1
    if count >= MAX_SEGMENTS:
        raise PayloadError(f"{what} are damaged: their framing declares {count} segments, "
                           f"fewer than {MAX_SEGMENTS} are read")
    table = (4 + 4 * count + _WORD - 1) // _WORD * _WORD
    if table > size:
        raise PayloadError(f"{what} are damaged: their framing's table of {count} segments is longer than "
                           f"their {size} bytes")
    declared = table + _WORD * sum(struct.unpack_from(f"<{count}I", keys, 4))
    if declared != size:
        raise PayloadError(f"{what} are damaged or resized: their framing declares {declared} bytes, {size} are "
                           "there (keys of another model cut or padded to this model's size?)")
