"""Uniform quantizers and the ``n_bits`` settings they are built from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np

NBitsLike = Union[int, Mapping[str, int]]

# The largest table lookup concrete-python accepts, and the widest quantization we allow.
MAX_TLU_BIT_WIDTH = 16
# concrete-python finds no crypto-parameters for wider encrypted integers (measured: 28 ok, 32 not).
MAX_ACCUMULATOR_BIT_WIDTH = 28
MAX_N_BITS = 16
DEFAULT_MODEL_BITS = 5


@dataclass(frozen=True)
class NBits:
    """Bit-widths of the four kinds of quantized values of a model.

    ``model_outputs`` is kept for compatibility: outputs leave the circuit as exact
    accumulators and are dequantized in the clear, so they are never re-quantized.
    """

    model_inputs: int
    op_inputs: int
    op_weights: int
    model_outputs: int

    @classmethod
    def parse(cls, n_bits: NBitsLike) -> "NBits":
        """Read an int (all four) or a dict with ``op_inputs`` and ``op_weights`` (mandatory)."""
        if isinstance(n_bits, (bool, np.bool_)):
            raise TypeError(f"n_bits must be an int or a dict, got {n_bits!r}")
        if isinstance(n_bits, (int, np.integer)):
            n = int(n_bits)
            values = dict(model_inputs=n, op_inputs=n, op_weights=n, model_outputs=max(n, DEFAULT_MODEL_BITS))
        elif isinstance(n_bits, Mapping):
            allowed = {"model_inputs", "op_inputs", "op_weights", "model_outputs"}
            unknown = set(n_bits) - allowed
            if unknown:
                raise ValueError(f"unknown n_bits keys {sorted(unknown)}; valid keys: {sorted(allowed)}")
            for key, value in n_bits.items():
                if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                    raise TypeError(f"n_bits[{key!r}] must be an int, got {value!r}")
            missing = {"op_inputs", "op_weights"} - set(n_bits)
            if missing:
                raise ValueError(f"n_bits dict must contain {sorted(missing)}")
            values = dict(
                model_inputs=n_bits.get("model_inputs", n_bits["op_inputs"]),
                op_inputs=n_bits["op_inputs"],
                op_weights=n_bits["op_weights"],
                model_outputs=n_bits.get("model_outputs", max(n_bits["op_inputs"], DEFAULT_MODEL_BITS)),
            )
        else:
            raise TypeError(f"n_bits must be an int or a dict, got {type(n_bits).__name__}")
        for key, value in values.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"n_bits[{key!r}] must be an int, got {value!r}")
            lowest = 2 if key == "op_weights" else 1
            if not lowest <= value <= MAX_N_BITS:
                raise ValueError(
                    f"n_bits[{key!r}]={value} is out of range: use {lowest} to {MAX_N_BITS} bits"
                )
        return cls(**{k: int(v) for k, v in values.items()})


@dataclass(frozen=True)
class UniformQuantizer:
    """Affine quantizer: ``x ≈ scale * (q - zero_point)`` with ``q`` in ``[q_min, q_max]``.

    A model's input quantizer may also keep each element of a sample within its own
    range, ``element_min`` to ``element_max`` (arrays of the sample's shape): the
    module's clip box, which the client applies as it quantizes.
    """

    scale: float
    zero_point: int
    q_min: int
    q_max: int
    element_min: Optional[np.ndarray] = field(default=None, compare=False)
    element_max: Optional[np.ndarray] = field(default=None, compare=False)

    @property
    def n_bits(self) -> int:
        return int(np.ceil(np.log2(self.q_max - self.q_min + 1)))

    @classmethod
    def unsigned(cls, values: np.ndarray, n_bits: int) -> "UniformQuantizer":
        """Calibrate on the values seen: the range always holds 0 so that 0 is exact."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            raise ValueError("cannot calibrate a quantizer on an empty set of values")
        if not np.all(np.isfinite(values)):
            raise ValueError("calibration values contain NaN or inf")
        low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
        levels = 2**n_bits - 1
        scale = (high - low) / levels if high > low else 1.0
        zero_point = int(np.clip(np.round(-low / scale), 0, levels))
        return cls(scale=scale, zero_point=zero_point, q_min=0, q_max=levels)

    @classmethod
    def symmetric(cls, values: np.ndarray, n_bits: int) -> "UniformQuantizer":
        """Signed quantizer with zero-point 0 using the whole range ``[-2^(n-1), 2^(n-1)-1]``."""
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("values to quantize contain NaN or inf")
        half = 2 ** (n_bits - 1)
        high = max(float(values.max(initial=0.0)), 0.0) / (half - 1) if half > 1 else 0.0
        low = -min(float(values.min(initial=0.0)), 0.0) / half
        scale = max(high, low)
        if n_bits == 1 or scale == 0.0:
            scale = max(float(np.abs(values).max(initial=0.0)), 1.0)
        return cls(scale=scale, zero_point=0, q_min=-half, q_max=half - 1)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(values, dtype=np.float64) / self.scale) + self.zero_point
        q = np.clip(q, self.q_min, self.q_max)
        if self.element_min is not None:
            q = np.clip(q, self.element_min, self.element_max)
        return q.astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return self.scale * (np.asarray(q, dtype=np.float64) - self.zero_point)
