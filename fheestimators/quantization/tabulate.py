"""Tabulation: a program on few input values becomes one table lookup per output element.

When the encrypted inputs take few distinct values in all (a 2-feature network on 3-bit
inputs: at most 8 x 8 combinations), the whole program is a function of one small
integer, ``packed = sum_i (q_i - low_i) * radix_i``: a linear combination with clear
constants, which costs no bootstrap. Each output element is then one table lookup on
``packed``, whose table is the program run in the clear on every combination. The
result equals the program on every input the module accepts, whatever its rounding, at
one small bootstrap per output element instead of one per neuron.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Optional, Sequence

import numpy as np

from .program import IntegerProgram
from .quantizers import UniformQuantizer
from .steps import AddSub, MatMul, Index, Reshape, Shift, Step, TableLookup, bit_width

# The most input combinations a program is tabulated on: its lookups then read at most
# 6 bits. Wider ones cost far more (10 lookups to 7-bit outputs, same run: 4 and 5 bits
# 0.5 s and 3.6-4.1 s of keygen, 6 bits 1.9 s and 10 s, 7 bits 4.1 s and 54 s; design notes).
MAX_TABULATED_COMBINATIONS = 2**6
# names of the tabulated program's steps (the layer reports show it)
PREFIX = "tabulated"
# the bits a table's entries keep (None: all, exact). A lookup's output is as wide as its
# widest entry, and concrete-python sizes the bootstrap for it: 12-bit logits needed
# polynomials of 4096 or more (design notes), though a classifier reads only their argmax
# and softmax. Set by ``narrowed_outputs`` for those who can afford it.
TABLE_OUTPUT_BITS: Optional[int] = None


@contextmanager
def tabulation_limit(limit: int) -> Iterator[None]:
    """Within this block, programs are tabulated up to ``limit`` input combinations (0: never)."""
    global MAX_TABULATED_COMBINATIONS
    saved, MAX_TABULATED_COMBINATIONS = MAX_TABULATED_COMBINATIONS, limit
    try:
        yield
    finally:
        MAX_TABULATED_COMBINATIONS = saved


@contextmanager
def narrowed_outputs(bits: Optional[int]) -> Iterator[None]:
    """Within this block, tabulated outputs keep ``bits`` bits (``2**bits`` levels over their range).

    Not exact any more: each output is read to half a level of its range.
    """
    global TABLE_OUTPUT_BITS
    saved, TABLE_OUTPUT_BITS = TABLE_OUTPUT_BITS, bits
    try:
        yield
    finally:
        TABLE_OUTPUT_BITS = saved


def input_domains(quantizers: Sequence[UniformQuantizer],
                  ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Per input, the integers it can take: its quantizer's range within the module's clip ``ranges``."""
    return [(max(q.q_min, int(low)), min(q.q_max, int(high))) for q, (low, high) in zip(quantizers, ranges)]


def n_combinations(program: IntegerProgram, domains: Sequence[tuple[int, int]]) -> int:
    """How many input samples the program can see: each element of each input over its domain."""
    total = 1
    for (low, high), shape in zip(domains, program.sample_shapes):
        total *= (high - low + 1) ** int(np.prod(shape, dtype=np.int64))
    return total


def _element_domains(program: IntegerProgram, domains: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Per element of the inputs, flattened in order: how many values it takes, and its lowest."""
    counts, lows = [], []
    for (low, high), shape in zip(domains, program.sample_shapes):
        size = int(np.prod(shape, dtype=np.int64))
        counts += [high - low + 1] * size
        lows += [low] * size
    return counts, lows


def all_inputs(program: IntegerProgram, domains: Sequence[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Every input sample, one row per combination, in ``packed`` order (the last element varies fastest)."""
    counts, lows = _element_domains(program, domains)
    shapes = [(int(np.prod(shape, dtype=np.int64)), tuple(shape)) for shape in program.sample_shapes]
    digits = np.indices(counts, dtype=np.int64).reshape(len(counts), -1).T if counts else np.zeros((1, 0), np.int64)
    values = digits + np.array(lows, dtype=np.int64)
    arrays, start = [], 0
    for size, shape in shapes:
        arrays.append(values[:, start : start + size].reshape((len(values), *shape)))
        start += size
    return tuple(arrays)


def should_tabulate(program: IntegerProgram, domains: Sequence[tuple[int, int]],
                    limit: Optional[int] = None) -> bool:
    """At most ``limit`` (default ``MAX_TABULATED_COMBINATIONS``) input combinations, and no
    more lookups after than before (a program without lookups costs no bootstrap)."""
    limit = MAX_TABULATED_COMBINATIONS if limit is None else limit
    if program.input_domains is not None or n_combinations(program, domains) > limit:
        return False
    lookups = sum(step.n_elements for step in program.table_lookups)
    probe = program.values(*[np.zeros((1, *shape), dtype=np.int64) for shape in program.sample_shapes])
    outputs = sum(int(np.prod(np.shape(probe[out.source])[1:], dtype=np.int64)) for out in program.outputs)
    return 0 < outputs <= lookups


def tabulate(program: IntegerProgram, domains: Sequence[tuple[int, int]], limit: Optional[int] = None) -> bool:
    """Replace the program's steps by one lookup per output element on the packed inputs, in place.

    ``domains`` gives each input's lowest and highest integer (``input_domains``); the
    program must only ever see inputs within them, so they are kept in
    ``program.input_domains`` for the module to clip to. Returns whether the program
    was tabulated (see ``should_tabulate``).
    """
    domains = [(int(low), int(high)) for low, high in domains]
    if not should_tabulate(program, domains, limit):
        return False
    combinations = all_inputs(program, domains)
    results = program.run(*combinations)
    results = results if isinstance(results, tuple) else (results,)
    results = tuple(_narrowed(program, k, np.asarray(r, dtype=np.int64)) for k, r in enumerate(results))
    sizes = [int(np.prod(r.shape[1:], dtype=np.int64)) for r in results]
    table = np.concatenate([np.asarray(r, dtype=np.int64).reshape(len(r), -1) for r in results], axis=1)
    n_rows, width = table.shape

    steps: list[Step] = []
    counts, lows = _element_domains(program, domains)
    # an element's radix: the product of the value counts of the elements after it
    radices = np.cumprod([1] + counts[::-1])[:-1][::-1].astype(np.int64)
    terms, start = [], 0
    for name, shape in zip(program.input_names, program.sample_shapes):
        size = int(np.prod(shape, dtype=np.int64))
        source = name
        if len(shape) != 1:
            source = f"{PREFIX}:{name}.flat"
            steps.append(Reshape(PREFIX, [name], source, sample_shape=(size,)))
        weight = np.repeat(radices[start : start + size, None], width, axis=1)  # each column: the packed index
        terms.append(f"{PREFIX}:{name}.packed")
        steps.append(MatMul(PREFIX, [source], terms[-1], weight=weight))
        start += size
    packed = terms[0]
    for i, term in enumerate(terms[1:]):
        steps.append(AddSub(PREFIX, [packed, term], f"{PREFIX}:packed.{i + 1}"))
        packed = steps[-1].output
    offset = -int(np.dot(lows, radices))
    if offset:
        steps.append(Shift(PREFIX, [packed], f"{PREFIX}:packed", constant=offset))
        packed = steps[-1].output
    # one table per column; concrete-python builds each over the packed integer's whole type,
    # so entries past the last combination repeat it (only a bootstrap's mistake reads them)
    padded = np.concatenate([table, np.repeat(table[-1:], (1 << bit_width(0, n_rows - 1)) - n_rows, axis=0)])
    columns = np.arange(width)

    def read_table(q: np.ndarray) -> np.ndarray:
        return padded[np.clip(np.asarray(q, dtype=np.int64), 0, len(padded) - 1), columns]

    table_name = f"{PREFIX}:table"
    steps.append(TableLookup(PREFIX, [packed], table_name, function=read_table,
                             input_bounds=(0, n_rows - 1), description=f"program on {n_rows} inputs",
                             sample_shape=(1, width)))
    start = 0
    for out, size, result in zip(program.outputs, sizes, results):
        if len(program.outputs) == 1 and result.ndim == 2:
            out.source = table_name
            break
        positions = start + np.arange(size).reshape(result.shape[1:])
        out.source = f"{table_name}.{start}"
        steps.append(Index(PREFIX, [table_name], out.source, positions=positions))
        start += size
    program.steps = steps
    program.input_domains = domains
    return True


def _narrowed(program: IntegerProgram, k: int, result: np.ndarray) -> np.ndarray:
    """Output ``k``'s table entries on ``TABLE_OUTPUT_BITS`` bits (if set), its dequantization rescaled.

    An entry ``v`` becomes ``round((v - low) / step)``, which dequantizes to within half a
    step of ``v``: the outputs keep 2^TABLE_OUTPUT_BITS levels over their range.
    """
    if TABLE_OUTPUT_BITS is None:
        return result
    low, high = int(result.min()), int(result.max())
    levels = (1 << TABLE_OUTPUT_BITS) - 1
    if high - low <= levels:
        return result
    step = (high - low) / levels
    out = program.outputs[k]
    program.outputs[k] = replace(out, scale=out.scale * step, offset=out.scale * low + out.offset)
    return np.rint((result - low) / step).astype(np.int64)


def clip_to_domains(q: Sequence[np.ndarray], domains: Optional[Sequence[tuple[int, int]]]) -> tuple:
    """``q`` clipped to the tabulated program's input domains (unchanged without them)."""
    if domains is None:
        return tuple(q)
    return tuple(np.clip(x, low, high) for x, (low, high) in zip(q, domains))
