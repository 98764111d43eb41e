"""Batches of serialized ciphertexts in a container: one member per sample and argument."""
from __future__ import annotations

from typing import Optional, Sequence

from .container import PayloadError, pack, unpack


def pack_values(kind: str, fingerprint: str, samples: Sequence[Sequence[bytes]]) -> bytes:
    n_args = len(samples[0]) if samples else 0
    members = {f"{i}/{j}": value for i, values in enumerate(samples) for j, value in enumerate(values)}
    return pack(kind, fingerprint, members, n_samples=len(samples), n_args=n_args)


def unpack_values(data: bytes, kind: str, fingerprint: str, n_args: Optional[int] = None,
                  sizes: Optional[Sequence[int]] = None, max_samples: Optional[int] = None) -> list[list[bytes]]:
    """The ciphertexts of each sample, checked against the model when ``n_args``/``sizes`` are given.

    ``sizes`` are the byte lengths of valid ciphertexts of each argument: concrete-python
    fixes them per circuit, so a length off means bytes of another model or damaged ones.
    """
    header, members = unpack(data, kind, fingerprint)
    n_samples, found_args = header.get("n_samples"), header.get("n_args")
    if not isinstance(n_samples, int) or not isinstance(found_args, int) or n_samples < 1:
        raise PayloadError(f"the {kind} holds no sample")
    if max_samples is not None and n_samples > max_samples:
        raise PayloadError(f"the {kind} holds {n_samples} samples; this server takes at most {max_samples} per request")
    if n_args is not None and found_args != n_args:
        raise PayloadError(f"the model takes {n_args} encrypted input(s) per sample, the {kind} has {found_args}")
    try:
        samples = [[members[f"{i}/{j}"] for j in range(found_args)] for i in range(n_samples)]
    except KeyError as missing:
        raise PayloadError(f"the {kind} lacks ciphertext {missing}") from None
    if len(members) != n_samples * found_args:
        raise PayloadError(f"the {kind} holds members beyond its {n_samples} x {found_args} ciphertexts")
    if sizes is not None:
        for i, values in enumerate(samples):
            for j, (value, size) in enumerate(zip(values, sizes)):
                if len(value) != size:
                    raise PayloadError(
                        f"ciphertext {j} of sample {i} has {len(value)} bytes where this model's have {size}: "
                        "it was made for another model (a different number of features?) or is damaged")
    return samples
