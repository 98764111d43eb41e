"""The few rows of an inputset that give concrete-python the same bounds as all of them.

concrete-python measures each traced value's range by running the circuit's graph on the
inputset one sample at a time, which makes compiling grow with the inputset. A range
is the lowest and highest value over all samples and elements, so the rows that reach
them are enough. Every value the circuit computes is a step's output or an element-wise
monotone function of one (a lookup's gain, shift and rounding), and the two rows
reaching each element's minimum and maximum hold both ends of such a function's range.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .program import IntegerProgram

# below this, tracing every row costs less than finding the extreme ones matters
MIN_ROWS_TO_SELECT = 256


def bounding_rows(program: IntegerProgram, q_inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Sorted indices of the rows that reach, for each element of each input and step
    output, its lowest and highest value on ``q_inputs`` (a batch per program input)."""
    n_rows = len(q_inputs[0])
    rows = {0}  # concrete traces the graph on the first sample: keep it first
    for array in program.values(*q_inputs).values():
        flat = np.asarray(array).reshape(n_rows, -1)
        rows.update(np.argmin(flat, axis=0).tolist())
        rows.update(np.argmax(flat, axis=0).tolist())
    return np.array(sorted(rows), dtype=np.int64)


def select_inputset(program: IntegerProgram, q_inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """``q_inputs`` cut to its bounding rows when it is large enough for this to pay."""
    if len(q_inputs[0]) < MIN_ROWS_TO_SELECT:
        return tuple(q_inputs)
    rows = bounding_rows(program, q_inputs)
    return tuple(np.asarray(x)[rows] for x in q_inputs)
