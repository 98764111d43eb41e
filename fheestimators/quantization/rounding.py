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
# With "auto", a lookup's input keeps this many bits more than its output has: finer
# steps than the output's own would be rounded away by the lookup anyway.
AUTO_MARGIN_BITS = 3


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
    program.measure_bounds(*calibration)
    for step in program.table_lookups:
        low, high = step.input_bounds
        width = bit_width(low, high)
        step.exactness = method
        target = bit_width(*step.output_bounds) + AUTO_MARGIN_BITS if n_bits == "auto" else n_bits
        lsbs = max(width - target, 0)
        # removing a single bit buys nothing and costs a rounding step
        step.lsbs_to_remove = lsbs if lsbs >= 2 or n_bits != "auto" else 0


def exact_fallback(program: IntegerProgram) -> bool:
    """Switch per-element lookups from approximate to exact rounding; True if any changed.

    concrete-python 2.11 fails to shrink per-element tables after approximate rounding
    (mlir/converter.py, ``tlu``, multi-table branch): those lookups must round exactly.
    """
    changed = False
    for step in program.table_lookups:
        if step.lsbs_to_remove and step.exactness == "approximate" and _per_element(step):
            step.exactness = "exact"
            changed = True
    return changed


def _per_element(step) -> bool:
    """Whether the lookup's table differs between elements (biases, per-channel scales)."""
    low, high = step.input_bounds
    probes = np.unique(np.linspace(low, high, 9).round().astype(np.int64))
    for value in probes:
        out = step.function(np.full(step.sample_shape, value, dtype=np.int64))
        if np.any(out != out.flat[0]):
            return True
    return False
