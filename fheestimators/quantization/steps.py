"""Steps of the integer program: what runs on encrypted (or clear quantized) integers.

A step reads integer tensors by name and writes one. ``numpy`` runs on a whole batch of
int64 arrays; ``fhe`` traces the same computation for concrete-python on a batch of one.
Most steps use numpy calls that concrete's tracer also understands, so ``fhe`` defaults
to ``numpy``; table lookups and convolutions differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from concrete import fhe

from ..onnx.ops import OPS


@dataclass
class Step:
    """Base step: ``name`` is the ONNX node it comes from, shown in reports and errors."""

    name: str
    inputs: list[str]
    output: str

    def numpy(self, *xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fhe(self, *xs):
        return self.numpy(*xs)


@dataclass
class Shift(Step):
    """Add a constant: removes an input zero-point, free in FHE."""

    constant: int = 0

    def numpy(self, x):
        return x + self.constant


@dataclass
class MatMul(Step):
    """``x @ weight`` (or ``weight @ x`` when ``left``) with an integer constant weight."""

    weight: np.ndarray = None
    left: bool = False

    def numpy(self, x):
        if _exact_in_float64(x, self.weight):  # BLAS: integer matmul in numpy is many times slower
            x, weight = np.asarray(x, dtype=np.float64), self.weight.astype(np.float64)
            out = np.matmul(weight, x) if self.left else np.matmul(x, weight)
            return np.rint(out).astype(np.int64)
        return np.matmul(self.weight, x) if self.left else np.matmul(x, self.weight)


@dataclass
class Conv(Step):
    """Integer convolution (also sum-pooling, as a depthwise convolution with ones)."""

    weight: np.ndarray = None
    pads: tuple = ()
    strides: tuple = ()
    dilations: tuple = ()
    group: int = 1

    def numpy(self, x):
        out = OPS["Conv"](x.astype(np.float64), self.weight.astype(np.float64), None,
                          pads=list(self.pads), strides=list(self.strides),
                          dilations=list(self.dilations), group=self.group)
        return np.rint(out).astype(np.int64)

    def fhe(self, x):
        return fhe.conv(x, self.weight, pads=list(self.pads), strides=list(self.strides),
                        dilations=list(self.dilations), group=self.group)


@dataclass
class ReduceSum(Step):
    axes: tuple = ()
    keepdims: bool = True

    def numpy(self, x):
        return np.sum(x, axis=self.axes, keepdims=self.keepdims)


@dataclass
class AddSub(Step):
    """Sum or difference of two encrypted tensors on the same scale."""

    subtract: bool = False

    def numpy(self, a, b):
        return a - b if self.subtract else a + b


@dataclass
class Reshape(Step):
    """Any shape change that keeps the batch axis first: ``sample_shape`` excludes it."""

    sample_shape: tuple = ()

    def numpy(self, x):
        return np.reshape(x, (x.shape[0], *self.sample_shape))


@dataclass
class Index(Step):
    """Gather elements by flat position across one or more inputs; position -1 reads zero.

    Every op that only moves elements (slice, gather, transpose, concat, pad, ...)
    becomes one of these: in FHE it costs no bootstrap.
    """

    positions: np.ndarray = None

    def _gather(self, xs, zeros):
        flats = [x.reshape((x.shape[0], -1)) for x in xs]
        if np.any(self.positions < 0):
            flats.append(zeros((xs[0].shape[0], 1)))
        flat = flats[0] if len(flats) == 1 else np.concatenate(tuple(flats), axis=1)
        out = flat[:, self.positions.ravel()]
        return out.reshape((xs[0].shape[0], *self.positions.shape))

    def numpy(self, *xs):
        return self._gather(xs, lambda shape: np.zeros(shape, dtype=np.int64))

    def fhe(self, *xs):
        return self._gather(xs, fhe.zeros)


@dataclass
class TableLookup(Step):
    """One programmable bootstrap per element: ``function`` maps integers to integers.

    ``lsbs_to_remove`` is set by the rounding pass: the accumulator is rounded to
    fewer bits before the lookup, which makes the bootstrap cheaper.
    """

    function: Callable[[np.ndarray], np.ndarray] = None
    lsbs_to_remove: int = 0
    exactness: str = "exact"
    #: the range of the rounded input the table reads, and of the table's output
    input_bounds: tuple = (0, 0)
    output_bounds: tuple = (0, 0)
    #: the range of the spread input before rounding (``QuantizedModule``s: over the input box)
    spread_bounds: tuple = None
    description: str = ""
    sample_shape: tuple = (1,)
    gain: np.ndarray = None
    shift: np.ndarray = None
    #: per element, added before the gain in the circuit and taken back after it (the spread
    #: value is the same): ``gain * (x + offset)`` is never wider than the spread value, as
    #: ``gain * x`` can be, which would make concrete-python carry the spread value on more
    #: bits and scale it up before rounding, its noise with it
    offset: np.ndarray = None
    #: per element (leading axis of 1), the one value the table gives for every input the box
    #: allows (``IntegerProgram.size_for_box``): the lookup then costs no bootstrap
    constant: np.ndarray = None

    @property
    def tag(self) -> str:
        """The circuit's tag of this lookup: its own, since several lookups can share a layer's name."""
        return f"{self.name}#{self.output}"

    @property
    def n_elements(self) -> int:
        """Bootstraps per sample: one per element."""
        return int(np.prod(self.sample_shape))

    def spread(self, x):
        """Scaled by ``gain`` and shifted by ``shift`` (see ``rounding._align``): free in FHE."""
        if self.gain is not None:
            x = x * self.gain
        return x if self.shift is None else x + self.shift

    def round(self, spread):
        """A spread input rounded half up, as an error-free bootstrap reads it."""
        return fhe.round_bit_pattern(spread, lsbs_to_remove=self.lsbs_to_remove) if self.lsbs_to_remove else spread

    def rounded(self, x):
        """The lookup's input: spread, then rounded."""
        return self.round(self.spread(x))

    def lookup(self, rounded):
        """The table, read at a rounded input: ``function`` of the accumulator it stands for."""
        if self.shift is not None:
            rounded = rounded - self.shift
        return self.function(rounded if self.gain is None else rounded / self.gain)

    def read(self, rounded: np.ndarray) -> np.ndarray:
        """``lookup`` on a batch: each element's table is evaluated once per value it takes.

        An element reads few distinct values across a large batch (its accumulator's
        range), so evaluating the table over that range and indexing it costs far less
        than evaluating the function on every sample.
        """
        rounded = np.asarray(rounded, dtype=np.int64)
        if rounded.ndim < 2 or len(rounded) < 64:
            return self.lookup(rounded)
        low = rounded.min(axis=0)
        unit = 1 << self.lsbs_to_remove
        if np.any((rounded - low) % unit):
            unit = 1
        span = int((rounded.max(axis=0) - low).max()) // unit + 1
        if 2 * span > len(rounded):
            return self.lookup(rounded)
        table = np.asarray(self.lookup(low + unit * np.arange(span).reshape((span,) + (1,) * low.ndim)))
        return np.take_along_axis(table, (rounded - low) // unit, axis=0)

    def numpy(self, x):
        if self.constant is not None:
            return np.broadcast_to(self.constant, (len(x), *self.constant.shape[1:])).copy()
        return self.read(self.rounded(np.asarray(x, dtype=np.int64)))

    def fhe(self, x):
        if self.constant is not None:
            # a fresh encryption, not x * 0: that would tie the value to x's bit-width; and
            # concrete-python 2.11 cannot compile a rounded lookup of one negative value
            return fhe.zeros(x.shape) + np.broadcast_to(self.constant, x.shape)
        if self.offset is not None and self.gain is not None:
            x = (x + self.offset) * self.gain + ((0 if self.shift is None else self.shift) - self.gain * self.offset)
        else:
            x = self.spread(x)
        # the spread and rounded values share one width: the rounding then keeps exactly the
        # bits the rounding pass chose (concrete-python adds one when the widths differ)
        hint = None
        if self.spread_bounds is not None:
            hint = np.array([min(self.spread_bounds[0], self.input_bounds[0]),
                             max(self.spread_bounds[1], self.input_bounds[1])])
            x = fhe.hint(x, can_store=hint)
        if self.lsbs_to_remove:
            exactness = fhe.Exactness.APPROXIMATE if self.exactness == "approximate" else fhe.Exactness.EXACT
            x = fhe.round_bit_pattern(x, lsbs_to_remove=self.lsbs_to_remove, exactness=exactness)
            if hint is not None:
                x = fhe.hint(x, can_store=hint)
        return fhe.univariate(self.lookup)(x)


def _exact_in_float64(x: np.ndarray, weight: np.ndarray) -> bool:
    """Every partial sum of ``x @ weight`` is an integer float64 holds exactly (below 2**53)."""
    x = np.asarray(x)
    if x.size == 0 or not np.issubdtype(x.dtype, np.integer):
        return False
    largest = max(abs(int(x.max())), abs(int(x.min())))
    return largest * int(np.abs(weight).astype(np.int64).sum()) < 2**53


def bit_width(low: int, high: int) -> int:
    """Bits of the smallest integer type, signed when ``low < 0``, holding ``[low, high]``."""
    if low >= 0:
        return max(int(high).bit_length(), 1)
    return max(int(-low - 1).bit_length(), int(high).bit_length()) + 1


def step_rules() -> tuple[dict[type, Callable], Callable[..., Callable]]:
    """A registry of one rule per step type (how an analysis treats it), and the decorator that fills it."""
    rules: dict[type, Callable] = {}

    def register(*step_types: type) -> Callable[[Callable], Callable]:
        def add(rule: Callable) -> Callable:
            for step_type in step_types:
                rules[step_type] = rule
            return rule

        return add

    return rules, register
