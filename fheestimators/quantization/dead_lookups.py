"""Drop the table lookups of neurons that cannot change the result.

A neuron between two linear layers costs one bootstrap. Pruning leaves neurons whose
outgoing weights are all zero (nothing reads them) and neurons whose incoming weights
are all zero (their lookup always returns the same number, which folds into the next
layer as a constant). Neither needs a bootstrap. Convolutions leave elements unread too:
a strided kernel without padding can skip the last rows and columns of its input (3x3
with stride 2 on 6x6 reads rows 0-4 only); their lookups are skipped as well.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .program import IntegerProgram
from .steps import Conv, Index, MatMul, Shift, Step, TableLookup


def remove_dead_lookups(program: IntegerProgram) -> int:
    """Shrink every ``MatMul → lookup → MatMul`` chain to its live neurons, in place.

    Returns how many bootstraps per sample were removed. Removing the neurons of one
    layer can kill neurons of the layer before, so chains are visited from the output
    back and the pass repeats until nothing changes.
    """
    removed_total = 0
    while True:
        removed = sum(_shrink(program, lookup) + _skip_unread(program, lookup)
                      for lookup in reversed(program.table_lookups))
        removed_total += removed
        if not removed:
            return removed_total


def _consumers(program: IntegerProgram, name: str) -> list[Step]:
    return [step for step in program.steps if name in step.inputs]


def _is_output(program: IntegerProgram, name: str) -> bool:
    return any(out.source == name for out in program.outputs)


def _producer(program: IntegerProgram, name: str) -> Optional[Step]:
    return next((step for step in program.steps if step.output == name), None)


def _shrink(program: IntegerProgram, lookup: TableLookup) -> int:
    width = lookup.sample_shape[-1]
    if len(lookup.sample_shape) != 2 or _is_output(program, lookup.output):
        return 0
    readers = _consumers(program, lookup.output)
    if len(readers) != 1 or not isinstance(readers[0], MatMul) or readers[0].left:
        return 0
    after = readers[0]
    chain = _lookup_chain(program, lookup)
    before = _producer(program, chain[-1].inputs[0])
    fed_by_matmul = isinstance(before, MatMul) and not before.left
    read = np.any(after.weight != 0, axis=1)
    constant = np.zeros(width, dtype=bool)
    if fed_by_matmul and len(chain) == 1:
        constant = ~np.any(before.weight != 0, axis=0)
    live = read & ~constant
    if live.all() or not live.any():
        return 0
    # a neuron with no incoming weight sees 0: its lookup is the constant function(0)
    outputs = lookup.function(np.zeros((1, width), dtype=np.int64))[0]
    folded = (outputs * constant * read) @ after.weight
    keep = np.flatnonzero(live)

    first = chain[-1]
    if fed_by_matmul and len(_consumers(program, before.output)) == 1:
        before.weight = before.weight[:, keep]
    else:
        # gathered before the chain's first lookup: concrete-python 2.11 fails to lower
        # a lookup → gather → lookup sequence ("one body argument per input dimension")
        gathered = f"{first.inputs[0]}.live"
        index = program.steps.index(first)
        program.steps.insert(index, Index(first.name, [first.inputs[0]], gathered, positions=keep))
        first.inputs = [gathered]
    for step in chain:
        step.function = _restricted(step.function, keep, width)
        step.sample_shape = (1, keep.size)
    after.weight = after.weight[keep]
    if np.any(folded != 0):
        total = after.output
        after.output = f"{total}.live"
        position = program.steps.index(after) + 1
        program.steps.insert(position, Shift(after.name, [after.output], total,
                                             constant=folded[None, :].astype(np.int64)))
    return width - keep.size


def _lookup_chain(program: IntegerProgram, lookup: TableLookup) -> list[TableLookup]:
    """``lookup`` and the lookups that feed it one to one (a quantizer before an
    activation, say), last first: all of them shrink with the neurons."""
    chain = [lookup]
    while True:
        source = _producer(program, chain[-1].inputs[0])
        if (not isinstance(source, TableLookup) or source.sample_shape != lookup.sample_shape
                or len(_consumers(program, source.output)) != 1 or _is_output(program, source.output)):
            return chain
        chain.append(source)


def _restricted(function, keep: np.ndarray, width: int):
    """The per-element ``function`` of ``width`` neurons, on the ``keep`` ones only."""

    def live_function(q):
        q = np.asarray(q)
        full = np.zeros(q.shape[:-1] + (width,), dtype=np.result_type(q.dtype, np.int64))  # gains divide
        full[..., keep] = q
        return function(full)[..., keep]

    return live_function


def _skip_unread(program: IntegerProgram, lookup: TableLookup) -> int:
    """Look up only the elements that the convolutions reading ``lookup`` use; the others read 0.

    The read elements are gathered before the chain of lookups and put back in place
    after it (moving elements costs no bootstrap); the unread places hold zeros, which no
    convolution output depends on. Returns how many bootstraps per sample were removed.
    """
    shape = tuple(lookup.sample_shape[1:])
    readers = _consumers(program, lookup.output)
    if _is_output(program, lookup.output) or not readers or not all(isinstance(r, Conv) for r in readers):
        return 0
    chain = _lookup_chain(program, lookup)
    first = chain[-1]
    if isinstance(_producer(program, first.inputs[0]), TableLookup):
        return 0  # concrete-python 2.11 fails to lower a lookup -> gather -> lookup sequence (see _shrink)
    read = np.zeros(shape, dtype=bool)
    for conv in readers:
        read |= conv_reads(conv, shape)
    if read.all() or not read.any():
        return 0
    keep = np.flatnonzero(read)
    gathered = f"{first.inputs[0]}.read"
    program.steps.insert(program.steps.index(first), Index(first.name, [first.inputs[0]], gathered, positions=keep))
    first.inputs = [gathered]
    for step in chain:
        step.function = _on_flat_positions(step.function, keep, shape)
        step.sample_shape = (1, keep.size)
    full = lookup.output
    lookup.output = f"{full}.read"
    positions = np.full(shape, -1, dtype=np.int64)  # -1: a zero, read by no convolution
    positions.flat[keep] = np.arange(keep.size)
    program.steps.insert(program.steps.index(lookup) + 1, Index(lookup.name, [lookup.output], full,
                                                                positions=positions))
    return read.size - keep.size


def conv_reads(conv: Conv, shape: tuple) -> np.ndarray:
    """Per element of a sample of shape ``shape`` (channels first), whether some output of ``conv``
    multiplies it by a non-zero weight: the gradient of the sum of outputs under ``|weight|``."""
    import torch
    import torch.nn.functional as F

    dims = len(shape) - 1
    x = torch.zeros((1, *shape), dtype=torch.float64, requires_grad=True)
    pads = list(conv.pads) or [0] * (2 * dims)
    # torch pads the last axis first, ONNX lists every axis' start, then every axis' end
    padded = F.pad(x, [p for axis in reversed(range(dims)) for p in (pads[axis], pads[axis + dims])])
    weight = torch.from_numpy(np.abs(np.asarray(conv.weight, dtype=np.float64)))
    convolve = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    out = convolve(padded, weight, stride=tuple(conv.strides) or 1, dilation=tuple(conv.dilations) or 1,
                   groups=conv.group)
    out.sum().backward()
    return (x.grad[0] != 0).numpy()


def _on_flat_positions(function, keep: np.ndarray, shape: tuple):
    """The per-element ``function`` of samples of ``shape``, on their flat positions ``keep`` only."""

    def read_function(q):
        q = np.asarray(q)
        full = np.zeros(q.shape[:-1] + (int(np.prod(shape)),), dtype=np.result_type(q.dtype, np.int64))
        full[..., keep] = q
        out = np.asarray(function(full.reshape(q.shape[:-1] + shape)))
        return out.reshape(q.shape[:-1] + (-1,))[..., keep]

    return read_function
