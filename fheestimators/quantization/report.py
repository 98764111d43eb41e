"""Per-layer report: what each table lookup costs, known before compiling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .program import IntegerProgram
from .steps import bit_width


@dataclass
class LayerReport:
    name: str
    operation: str
    accumulator_range: tuple
    accumulator_bits: int
    lookup_bits: Optional[int]
    table_lookups: int
    lsbs_removed: int


def layer_reports(program: IntegerProgram) -> list[LayerReport]:
    """One row per step that produces an accumulator or a lookup."""
    rows = []
    for step in program.table_lookups:
        low, high = step.input_bounds
        width = bit_width(low, high)
        rows.append(LayerReport(step.name, f"lookup: {step.description}", (low, high), width,
                                max(width - step.lsbs_to_remove, 1), step.n_elements, step.lsbs_to_remove))
    return rows


def format_report(rows: list[LayerReport], circuit=None) -> str:
    lines = [f"{'layer':40s} {'operation':28s} {'acc bits':>8s} {'TLU bits':>8s} {'TLUs':>6s} {'rounded':>7s}"]
    for r in rows:
        lines.append(f"{r.name[:40]:40s} {r.operation[:28]:28s} {r.accumulator_bits:8d} "
                     f"{r.lookup_bits if r.lookup_bits is not None else '-':>8} "
                     f"{r.table_lookups:6d} {r.lsbs_removed:7d}")
    if circuit is not None:
        lines.append(f"circuit: {circuit.programmable_bootstrap_count} bootstraps, "
                     f"max bit-width {circuit.graph.maximum_integer_bit_width()}")
    return "\n".join(lines)
