"""Accumulator rounding: a pass over the program's table lookups.

Rounding an accumulator to its ``n`` most significant bits before a lookup makes the
bootstrap work on ``n`` bits instead of the accumulator's full width.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

from .program import IntegerProgram
from .steps import bit_width

RoundingLike = Union[None, int, Mapping[str, Union[str, int]]]
# With "auto", a lookup keeps the fewest bits whose outputs differ from the exact ones
# on at most this share of the calibration values.
AUTO_TOLERANCE = 0.01


def parse_rounding(rounding_threshold_bits: RoundingLike) -> Optional[tuple[Union[int, str], str]]:
    """``(n_bits or "auto", "exact" | "approximate")``, or None for no rounding."""
    if rounding_threshold_bits is None:
        return None
    method = "approximate"
    n_bits = rounding_threshold_bits
    if isinstance(rounding_threshold_bits, Mapping):
        unknown = set(rounding_threshold_bits) - {"n_bits", "method"}
        if unknown:
            raise ValueError(f"unknown rounding_threshold_bits keys {sorted(unknown)}; use 'n_bits' and 'method'")
        n_bits = rounding_threshold_bits.get("n_bits", "auto")
        method = str(getattr(rounding_threshold_bits.get("method", method), "name", rounding_threshold_bits.get("method", method))).lower()
        if method not in ("exact", "approximate"):
            raise ValueError(f"rounding method {method!r} is not 'exact' or 'approximate'")
    if n_bits == "auto":
        return "auto", method
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)):
        raise TypeError(f"rounding_threshold_bits n_bits must be an int or 'auto', got {n_bits!r}")
    if not 2 <= n_bits <= 16:
        raise ValueError(f"rounding_threshold_bits={n_bits} is out of range: use 2 to 16")
    return int(n_bits), method


def apply_rounding(program: IntegerProgram, calibration: tuple, rounding: RoundingLike) -> None:
    """Set ``lsbs_to_remove`` on every lookup whose input is wider than the threshold."""
    parsed = parse_rounding(rounding)
    for step in program.table_lookups:
        step.lsbs_to_remove = 0
    if parsed is None:
        return
    n_bits, method = parsed
    values = _lookup_inputs(program, calibration)
    for step in program.table_lookups:
        low, high = step.input_bounds
        width = bit_width(low, high)
        step.exactness = method
        if n_bits == "auto":
            step.lsbs_to_remove = _auto_lsbs(step, values[step.output], width)
        else:
            step.lsbs_to_remove = max(width - n_bits, 0)


def _lookup_inputs(program: IntegerProgram, calibration: tuple) -> dict[str, np.ndarray]:
    found = {}

    def record(step, x):
        found[step.output] = x
        return x

    program.run(*calibration, before_lookup=record)
    return found


def _auto_lsbs(step, x: np.ndarray, width: int) -> int:
    exact = step.function(x)
    best = 0
    for lsbs in range(1, width):
        unit, half = 1 << lsbs, 1 << (lsbs - 1)
        rounded = (x + half) // unit * unit
        if np.mean(step.function(rounded) != exact) > AUTO_TOLERANCE:
            break
        best = lsbs
    return best
