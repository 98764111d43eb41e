"""What the builder knows about an encrypted tensor while it walks the float graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..onnx.ops import OPS


@dataclass
class Encrypted:
    """An encrypted value, as ``fn(scale * q + offset)`` of the integer tensor ``source``.

    ``scale`` and ``offset`` broadcast against one sample (a leading axis of 1), so
    they can hold one number per channel or per element (biases, pooling counts).
    ``fn`` gathers the element-wise ops not applied yet: they all fold into the table
    lookup that materializes the value, or run in the clear after the last layer.
    ``quantized`` marks values fit for a linear layer: an ``n``-bit integer times one scale.
    ``origin`` names the layer whose output this is, for reports and errors.
    """

    source: str
    scale: np.ndarray
    offset: np.ndarray
    fn: Optional[Callable[[np.ndarray], np.ndarray]] = None
    quantized: bool = False
    ops: tuple = ()
    origin: str = ""

    def __post_init__(self):
        self.scale = _compact(np.asarray(self.scale, dtype=np.float64))
        self.offset = _compact(np.asarray(self.offset, dtype=np.float64))

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        values = self.scale * q + self.offset
        return values if self.fn is None else np.asarray(self.fn(values), dtype=np.float64)

    def same_source(self, other: "Encrypted") -> bool:
        """Both are functions of the same integers, so one lookup can compute any mix of them."""
        return self.source == other.source

    @property
    def affine(self) -> bool:
        return self.fn is None


@dataclass
class Dequantize:
    """``fn(scale * q + offset)``: how one operand of an element-wise op reads the integers."""

    scale: np.ndarray
    offset: np.ndarray
    fn: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def __call__(self, q: np.ndarray) -> np.ndarray:
        values = self.scale * q + self.offset
        return values if self.fn is None else np.asarray(self.fn(values), dtype=np.float64)


@dataclass
class ElementwiseOp:
    """An element-wise ONNX op on values read from one integer tensor.

    Data rather than a closure, so that the ops left for the client after the last
    lookup can be written to a deployment artefact and read back without pickle.
    ``operands`` holds a ``Dequantize`` per encrypted operand and the constants as arrays.
    """

    op_type: str
    attrs: dict
    operands: list[Any]

    def __call__(self, q: np.ndarray) -> np.ndarray:
        inputs = [operand(q) if isinstance(operand, Dequantize) else operand for operand in self.operands]
        return OPS[self.op_type](*inputs, **self.attrs)


def _compact(array: np.ndarray) -> np.ndarray:
    """An array whose elements are all equal becomes a scalar: fewer distinct tables."""
    if array.ndim and array.size and np.all(array == array.flat[0]):
        return np.asarray(array.flat[0])
    return array
