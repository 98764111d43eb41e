"""Batches of serialized ciphertexts in a container: one member per sample and argument."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

from .container import MAX_HEADER_BYTES, PayloadError, pack, read_header, unpack

# a member entry of the header, ["12345/0", 123456789], with room to spare
_ENTRY_BYTES = 64


def pack_values(kind: str, fingerprint: str, samples: Sequence[Sequence[bytes]]) -> bytes:
    n_args = len(samples[0]) if samples else 0
    members = {f"{i}/{j}": value for i, values in enumerate(samples) for j, value in enumerate(values)}
    return pack(kind, fingerprint, members, n_samples=len(samples), n_args=n_args)


def unpack_values(data: bytes, kind: str, fingerprint: str, n_args: Optional[int] = None,
                  sizes: Optional[Sequence[int]] = None, max_samples: Optional[int] = None) -> list[list[bytes]]:
    """The ciphertexts of each sample, checked against the model when ``n_args``/``sizes`` are given.

    ``sizes`` are the byte lengths of valid ciphertexts of each argument: concrete-python
    fixes them per circuit, so a length off means bytes of another model or damaged ones.
    Counts and sizes are checked from the header, before any ciphertext is copied; with
    ``max_samples`` and ``n_args``, the header itself is capped to that many ciphertexts.
    Without them (a client reading its results), only the length of ``data`` bounds it.
    """
    if max_samples is not None and n_args is not None:
        max_members = max(max_samples * n_args, 1)
        limits = {"max_members": max_members, "max_header_bytes": MAX_HEADER_BYTES + _ENTRY_BYTES * max_members}
    else:
        limits = {"max_members": None, "max_header_bytes": None}
    header, found = read_header(data, kind, fingerprint, **limits)
    n_samples, found_args = header.get("n_samples"), header.get("n_args")
    if type(n_samples) is not int or type(found_args) is not int or n_samples < 1:
        raise PayloadError(f"the {kind} holds no sample")
    if max_samples is not None and n_samples > max_samples:
        raise PayloadError(f"the {kind} holds {n_samples} samples; this server takes at most {max_samples} per request")
    if n_args is not None and found_args != n_args:
        raise PayloadError(f"the model takes {n_args} encrypted input(s) per sample, the {kind} has {found_args}")
    if found_args < 1:
        raise PayloadError(f"the {kind} holds no ciphertext per sample")
    # at most len(found) + 1 names are made before a missing one is met: the header's claims build nothing
    if n_samples * found_args > len(found) or any(name not in found for name in _names(n_samples, found_args)):
        missing = next(name for name in _names(n_samples, found_args) if name not in found)
        raise PayloadError(f"the {kind} lacks ciphertext {missing!r}")
    if len(found) != n_samples * found_args:
        raise PayloadError(f"the {kind} holds members beyond its {n_samples} x {found_args} ciphertexts")
    if sizes is not None:
        for i in range(n_samples):
            for j, size in enumerate(sizes[:found_args]):
                if found[f"{i}/{j}"] != size:
                    raise PayloadError(
                        f"ciphertext {j} of sample {i} has {found[f'{i}/{j}']} bytes where this model's have {size}: "
                        "it was made for another model (a different number of features?) or is damaged")
    # the same checks hold for the members copied: exactly the names and lengths read above
    _, members = unpack(data, kind, fingerprint, max_members=len(found), max_header_bytes=limits["max_header_bytes"],
                        expected_sizes=found)
    return [[members[f"{i}/{j}"] for j in range(found_args)] for i in range(n_samples)]


def _names(n_samples: int, n_args: int) -> Iterator[str]:
    return (f"{i}/{j}" for i in range(n_samples) for j in range(n_args))
