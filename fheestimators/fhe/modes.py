"""The execution modes a quantized model accepts."""
from __future__ import annotations

from enum import Enum


class FheMode(str, Enum):
    """``disable``: integers in numpy; ``simulate``: FHE semantics in numpy; ``execute``: encrypted."""

    DISABLE = "disable"
    SIMULATE = "simulate"
    EXECUTE = "execute"

    @classmethod
    def parse(cls, value) -> "FheMode":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        valid = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"fhe={value!r} is not a valid mode; use one of {valid}")
