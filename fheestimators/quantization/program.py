"""The integer program: quantized inputs -> steps -> outputs to dequantize in the clear."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from .quantizers import UniformQuantizer
from .steps import Step, TableLookup, bit_width


@dataclass
class Output:
    """How to read a float output from an integer one: ``fn(scale * q + offset)``.

    ``fn`` holds the element-wise ops that follow the last linear layer; the client
    applies them after decryption, which saves a table lookup per output.
    """

    source: str
    scale: np.ndarray
    offset: np.ndarray
    fn: Optional[Callable[[np.ndarray], np.ndarray]] = None

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        values = self.scale * np.asarray(q, dtype=np.float64) + self.offset
        return values if self.fn is None else np.asarray(self.fn(values), dtype=np.float64)

    def followed_by(self, scale, offset) -> "Output":
        """This output mapped by ``scale * value + offset`` (per column), as one dequantization."""
        if self.fn is None:
            return replace(self, scale=self.scale * scale, offset=self.offset * scale + offset)
        return replace(self, fn=_Affine(self.fn, np.asarray(scale), np.asarray(offset)))


@dataclass(frozen=True)
class _Affine:
    """``scale * fn(values) + offset``: a picklable composition."""

    fn: Callable[[np.ndarray], np.ndarray]
    scale: np.ndarray
    offset: np.ndarray

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(self.fn(values), dtype=np.float64) + self.offset


@dataclass
class IntegerProgram:
    """What a ``QuantizedModule`` runs: the same steps in numpy, in simulation and in FHE."""

    input_names: list[str]
    input_quantizers: list[UniformQuantizer]
    steps: list[Step]
    outputs: list[Output]
    sample_shapes: list[tuple] = field(default_factory=list)
    #: per input, the only integers the steps are valid for (set by ``tabulate``), or None
    input_domains: Optional[list[tuple[int, int]]] = None
    #: per input, the lowest and highest integer of each element (int64 arrays of the sample's
    #: shape) that every value was sized for (``size_for_box``), or None
    input_box: Optional[list[tuple[np.ndarray, np.ndarray]]] = None
    #: per input and step output, the lowest and highest value over ``input_box``
    value_bounds: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def table_lookups(self) -> list[TableLookup]:
        return [step for step in self.steps if isinstance(step, TableLookup)]

    def run(self, *q_inputs, backend: str = "numpy", round_lookup=None):
        """Run every step; ``round_lookup(step, x)``, given a lookup's spread input, returns
        the rounded input its table reads (the simulation's noisy rounding)."""
        values = dict(zip(self.input_names, q_inputs))
        for step in self.steps:
            args = [values[name] for name in step.inputs]
            if backend == "fhe":
                values[step.output] = _traced(step, args, self.value_bounds.get(step.output))
            elif round_lookup is not None and isinstance(step, TableLookup) and step.constant is None:
                values[step.output] = step.read(round_lookup(step, step.spread(np.asarray(args[0], dtype=np.int64))))
            else:
                values[step.output] = step.numpy(*args)
        results = tuple(values[out.source] for out in self.outputs)
        return results if len(results) > 1 else results[0]

    def values(self, *q_inputs) -> dict[str, np.ndarray]:
        """Every input and step output, by name, computed in numpy on a batch."""
        values = dict(zip(self.input_names, q_inputs))
        for step in self.steps:
            values[step.output] = step.numpy(*[values[name] for name in step.inputs])
        return values

    def measure_bounds(self, *q_inputs) -> None:
        """Record each lookup's input and output range on a data set (after rounding)."""
        values = self.values(*q_inputs)
        for step in self.table_lookups:
            rounded = step.rounded(values[step.inputs[0]])
            out = values[step.output]
            step.input_bounds = (int(rounded.min()), int(rounded.max()))
            step.output_bounds = (int(out.min()), int(out.max()))

    def size_for_box(self, ranges: Sequence[tuple]) -> None:
        """Record each value's range over every input within ``ranges``: per input, the lowest and
        highest integer, two numbers or two arrays of the sample's shape (one range per element).

        Each lookup's input, rounded and output ranges are those over the box, not over a
        data set; compiling hints every value's range to concrete-python, so that no input
        within the box can leave a range the circuit was built for (``bounds.py``).
        """
        from .bounds import box_bounds, rounded_bounds, span, spread_bounds

        self.input_box = [(_element_ends(low, shape), _element_ends(high, shape))
                          for (low, high), shape in zip(ranges, self.sample_shapes)]
        intervals = box_bounds(self, self.input_box)
        self.value_bounds = {name: span(interval) for name, interval in intervals.items()}
        for step in self.table_lookups:
            source = intervals[step.inputs[0]]
            step.spread_bounds = span(spread_bounds(step, source))
            step.input_bounds = span(rounded_bounds(step, source))
            step.output_bounds = self.value_bounds[step.output]
            low, high = intervals[step.output]
            # a table of one value per element over the box (saturated neurons): no bootstrap
            step.constant = np.array(low) if np.array_equal(low, high) else None

    def step_bit_widths(self, *q_inputs) -> list[tuple[Step, int]]:
        """Each step with the bit-width of its output on a data set, or over the input box when
        the program was sized for one (``size_for_box``) and no data set is given."""
        if not q_inputs and self.value_bounds:
            return [(step, bit_width(*self.value_bounds[step.output])) for step in self.steps]
        values = self.values(*q_inputs)
        return [(step, bit_width(int(values[step.output].min()), int(values[step.output].max())))
                for step in self.steps]


def _element_ends(ends, shape) -> np.ndarray:
    """One integer per element of a sample: ``ends`` (a number or an array) broadcast to ``shape``."""
    return np.array(np.broadcast_to(np.asarray(ends, dtype=np.int64), tuple(shape)))


def _traced(step: Step, args, value_range: Optional[tuple[int, int]] = None):
    from concrete import fhe

    with fhe.tag(step.tag if isinstance(step, TableLookup) else step.name):
        out = step.fhe(*args)
        # the range over the input box, which the inputset's rows may not reach
        return out if value_range is None else fhe.hint(out, can_store=np.array(value_range))
