"""How each ONNX op acts on encrypted values: one small rule per op (or family of ops)."""
from __future__ import annotations

import numpy as np

from ..onnx.graph import Node
from ..onnx.ops import OPS
from .builder import Builder, rule
from .steps import AddSub, Conv, Index, MatMul, ReduceSum, Reshape
from .values import Dequantize, ElementwiseOp, Encrypted

# Element-wise ops: on values derived from a single encrypted tensor they fold into a lookup.
ELEMENTWISE = (
    "Abs", "Neg", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Erf",
    "Sign", "Floor", "Ceil", "Round", "Min", "Max", "Sum", "Mean", "Relu", "LeakyRelu", "PRelu",
    "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign",
    "Mish", "Gelu", "Clip", "Shrink", "ThresholdedRelu", "Sin", "Cos", "Tan", "Atan", "Asin",
    "Acos", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Equal", "Not", "And", "Or", "Xor", "Where", "IsNaN", "IsInf",
    "BatchNormalization", "Cast", "CastLike",
)
# Ops that only move elements around.
DATA_MOVEMENT = (
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather", "Concat",
    "Expand", "Tile", "Split", "Pad",
)
_PASS_THROUGH = ("Identity", "Dropout")


def _per_sample(builder: Builder, const: np.ndarray, like: tuple) -> np.ndarray:
    """A constant computed from shapes may carry the calibration batch: keep one sample."""
    const = np.asarray(const)
    if const.ndim == len(like) + 1 and const.shape[0] == builder.batch > 1:
        if not np.all(const == const[:1]):
            raise ValueError("a constant differs between samples of the batch; it cannot be compiled")
        return const[:1]
    return const


@rule("Quant")
def quant(builder: Builder, node: Node, args: list) -> list:
    if any(isinstance(a, Encrypted) for a in args[1:]):
        raise ValueError(f"Quant node {node.name!r}: scale, zero-point and bit-width must be constants")
    return [builder.requantize(args[0], node, args[1:])]


@rule("Shape")
def shape(builder: Builder, node: Node, args: list) -> list:
    """The shape on the calibration batch: reshapes that follow keep the batch axis free."""
    return [node.evaluate(builder.ints[args[0].source])[0]]


@rule(*_PASS_THROUGH)
def pass_through(builder: Builder, node: Node, args: list) -> list:
    return [args[0]]


@rule(*ELEMENTWISE)
def elementwise(builder: Builder, node: Node, args: list) -> list:
    encrypted = [a for a in args if isinstance(a, Encrypted)]
    first = encrypted[0]
    if node.op_type in ("Cast", "CastLike") and _casts_to_float(node, args):
        return [first]
    if not all(first.same_source(other) for other in encrypted[1:]):
        if node.op_type in ("Add", "Sub") and len(encrypted) == 2:
            return [_encrypted_add(builder, node, *args)]
        raise ValueError(
            f"{node.op_type} between two different encrypted tensors (node {node.name!r}) is not "
            "supported: only Add and Sub combine encrypted tensors"
        )
    shape = (1, *builder.sample_shape(first))
    consts = [None if a is None or isinstance(a, Encrypted) else _per_sample(builder, a, shape[1:])
              for a in args]
    folded = _fold_affine(node, args, consts, shape)
    if folded is not None:
        return [folded]
    # the lookup reads the source integers; each argument dequantizes them its own way
    operands = [Dequantize(a.scale, a.offset, a.fn) if isinstance(a, Encrypted) else const
                for a, const in zip(args, consts)]
    composed = ElementwiseOp(node.op_type, dict(node.attrs), operands)
    return [Encrypted(first.source, 1.0, 0.0, fn=composed, ops=first.ops + (node.op_type,), origin=first.origin)]


def _casts_to_float(node: Node, args: list) -> bool:
    if node.op_type == "CastLike":
        return np.issubdtype(np.asarray(args[1]).dtype, np.floating)
    from onnx import helper

    return np.issubdtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]), np.floating)


def _fold_affine(node: Node, args: list, consts: list, shape: tuple):
    """``scale*q + offset`` followed by +, -, *, / with a constant stays affine: no lookup."""
    if node.op_type not in ("Add", "Sub", "Mul", "Div", "Neg"):
        return None
    positions = [i for i, a in enumerate(args) if isinstance(a, Encrypted)]
    if len(positions) > 1:
        return None  # a function of the value with itself (x * sigmoid(x)): a lookup
    position = positions[0]
    value = args[position]
    if not value.affine:
        return None
    if node.op_type == "Neg":
        return Encrypted(value.source, -value.scale, -value.offset, quantized=value.quantized, ops=value.ops,
                         origin=value.origin)
    const = np.asarray(consts[1 - position], dtype=np.float64)
    if np.broadcast_shapes(const.shape, shape) != shape:
        return None  # the constant would change the shape: keep it in a lookup
    scale, offset = value.scale, value.offset
    scalar = const.size == 1
    if node.op_type == "Add":
        return Encrypted(value.source, scale, offset + const, ops=value.ops, origin=value.origin)
    if node.op_type == "Sub":
        if position == 0:
            return Encrypted(value.source, scale, offset - const, ops=value.ops, origin=value.origin)
        return Encrypted(value.source, -scale, const - offset, ops=value.ops, origin=value.origin)
    if node.op_type == "Mul":
        return Encrypted(value.source, scale * const, offset * const,
                         quantized=value.quantized and scalar and not np.any(const == 0), ops=value.ops,
                         origin=value.origin)
    if position == 0 and not np.any(const == 0):  # Div by a constant
        return Encrypted(value.source, scale / const, offset / const,
                         quantized=value.quantized and scalar, ops=value.ops, origin=value.origin)
    return None


def _encrypted_add(builder: Builder, node: Node, a: Encrypted, b: Encrypted) -> Encrypted:
    """Add or subtract two encrypted tensors on one scale.

    Two accumulators (the linear regressor's term and its MLP's output): the wider one
    stays exact and the other is looked up on its scale, one lookup and no rounding of
    the wider term. Otherwise both go to the coarser of their scales (a lookup where needed).
    """
    subtract = node.op_type == "Sub"
    kept = _exact_term(builder, a, b)
    if kept is not None:
        other = b if kept is a else a
        looked_up = builder.materialize(other, f"{node.name}.{'rhs' if kept is a else 'lhs'}", scale=float(kept.scale))
        sources = [kept.source, looked_up.source] if kept is a else [looked_up.source, kept.source]
        out = builder.add(AddSub(node.name, sources, builder.fresh(node.outputs[0]), subtract=subtract))
        offset = -kept.offset if subtract and kept is b else kept.offset
        return Encrypted(out, float(kept.scale), offset, origin=node.name)
    scale = max(builder.natural_scale(a), builder.natural_scale(b))
    qa = builder.materialize(a, f"{node.name}.lhs", scale=scale)
    qb = builder.materialize(b, f"{node.name}.rhs", scale=scale)
    out = builder.add(AddSub(node.name, [qa.source, qb.source], builder.fresh(node.outputs[0]), subtract=subtract))
    return Encrypted(out, scale, 0.0, origin=node.name)


def _exact_term(builder: Builder, a: Encrypted, b: Encrypted):
    """Of two accumulators (affine, one scale each, not requantized), the one of wider range; else None."""
    if not all(v.affine and not v.quantized and np.ndim(v.scale) == 0 for v in (a, b)):
        return None
    # the other's lookup then writes integers no wider than the kept term's, on the rows seen
    return max((a, b), key=lambda v: float(np.ptp(builder.float_values(v))))


def _weights(args: list, node: Node, position: int) -> np.ndarray:
    weight = args[position]
    if isinstance(weight, Encrypted):
        raise ValueError(
            f"{node.op_type} node {node.name!r} multiplies two encrypted tensors; only "
            "constant weights are supported"
        )
    return np.asarray(weight, dtype=np.float64)


@rule("Gemm")
def gemm(builder: Builder, node: Node, args: list) -> list:
    a = args[0]
    if not isinstance(a, Encrypted) or node.attrs.get("transA", 0):
        raise ValueError(f"Gemm node {node.name!r}: only an encrypted first input, not transposed, is supported")
    weight = _weights(args, node, 1)
    if node.attrs.get("transB", 0):
        weight = weight.T
    weight = weight * node.attrs.get("alpha", 1.0)
    bias = args[2] if len(args) > 2 and args[2] is not None else 0.0
    return [_matmul(builder, node, a, weight, np.asarray(bias) * node.attrs.get("beta", 1.0),
                    transposed=bool(node.attrs.get("transB", 0)))]


@rule("MatMul")
def matmul(builder: Builder, node: Node, args: list) -> list:
    a, b = args
    if isinstance(a, Encrypted):
        return [_matmul(builder, node, a, _weights(args, node, 1), 0.0)]
    return [_matmul(builder, node, b, _weights(args, node, 0), 0.0, left=True)]


def _matmul(builder, node, value, weight, bias, left=False, transposed=False) -> Encrypted:
    x = builder.linear_input(value, node)
    # output channels: the columns of ``x @ weight``, the rows of ``weight @ x``
    q_weight, w_scale = builder.quantize_weights(weight, node, 0 if left else 1, channel_axis=0 if left else -1,
                                                 transposed=transposed)
    if left and np.ndim(w_scale):  # one scale per row of the output
        w_scale = np.reshape(w_scale, (-1, 1))
    out = builder.add(MatMul(node.name, [x.source], builder.fresh(node.outputs[0]), weight=q_weight, left=left))
    return Encrypted(out, x.scale * w_scale, bias, origin=node.name)


def _explicit_pads(node: Node, in_shape: tuple, kernel: tuple, strides: tuple, dilations: tuple) -> list:
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    spatial = len(kernel)
    if auto_pad in ("NOTSET", ""):
        return list(node.attrs.get("pads", [0] * 2 * spatial))
    if auto_pad == "VALID":
        return [0] * 2 * spatial
    begins, ends = [], []
    for size, k, s, d in zip(in_shape[-spatial:], kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


@rule("Conv")
def conv(builder: Builder, node: Node, args: list) -> list:
    value = args[0]
    weight = _weights(args, node, 1)
    x = builder.linear_input(value, node)
    spatial = weight.ndim - 2
    strides = tuple(node.attrs.get("strides", [1] * spatial))
    dilations = tuple(node.attrs.get("dilations", [1] * spatial))
    pads = _explicit_pads(node, builder.ints[x.source].shape, weight.shape[2:], strides, dilations)
    q_weight, w_scale = builder.quantize_weights(weight, node, 1, channel_axis=0)
    w_scale = np.reshape(w_scale, (-1,) + (1,) * spatial)  # one per output channel, or one for all
    out = builder.add(Conv(node.name, [x.source], builder.fresh(node.outputs[0]), weight=q_weight,
                           pads=tuple(pads), strides=strides, dilations=dilations,
                           group=node.attrs.get("group", 1)))
    bias = args[2] if len(args) > 2 and args[2] is not None else np.zeros(1)
    return [Encrypted(out, x.scale * w_scale, np.asarray(bias).reshape(-1, *([1] * spatial)), origin=node.name)]


@rule("AveragePool")
def average_pool(builder: Builder, node: Node, args: list) -> list:
    """Sum-pooling as a depthwise convolution of ones; the division goes into the scale."""
    if node.attrs.get("ceil_mode", 0):
        raise ValueError(f"AveragePool node {node.name!r}: ceil_mode=1 is not supported")
    x = builder.materialize(args[0], f"{node.name}.input")
    shape = builder.ints[x.source].shape
    kernel = tuple(node.attrs["kernel_shape"])
    strides = tuple(node.attrs.get("strides", [1] * len(kernel)))
    pads = _explicit_pads(node, shape, kernel, strides, (1,) * len(kernel))
    channels = shape[1]
    ones = np.ones((channels, 1, *kernel), dtype=np.int64)
    out = builder.add(Conv(node.name, [x.source], builder.fresh(node.outputs[0]), weight=ones,
                           pads=tuple(pads), strides=strides, dilations=(1,) * len(kernel), group=channels))
    if node.attrs.get("count_include_pad", 0) or not any(pads):
        counts = np.asarray(float(np.prod(kernel)))
    else:
        counts = OPS["Conv"](np.ones((1, 1, *shape[2:])), np.ones((1, 1, *kernel)), None,
                             pads=pads, strides=list(strides))
    return [Encrypted(out, x.scale / counts, 0.0, origin=node.name)]


@rule("GlobalAveragePool", "ReduceSum", "ReduceMean")
def reduce_sum(builder: Builder, node: Node, args: list) -> list:
    x = builder.materialize(args[0], f"{node.name}.input")
    ndim = builder.ints[x.source].ndim
    if node.op_type == "GlobalAveragePool":
        axes, keepdims = tuple(range(2, ndim)), True
    else:
        axes = args[1] if len(args) > 1 and args[1] is not None else node.attrs.get("axes")
        axes = tuple(range(1, ndim)) if axes is None or len(axes) == 0 else tuple(int(a) % ndim for a in np.ravel(axes))
        keepdims = bool(node.attrs.get("keepdims", 1))
    if 0 in axes:
        raise ValueError(f"{node.op_type} node {node.name!r} reduces over the batch axis")
    out = builder.add(ReduceSum(node.name, [x.source], builder.fresh(node.outputs[0]), axes=axes, keepdims=keepdims))
    count = 1 if node.op_type == "ReduceSum" else int(np.prod([builder.ints[x.source].shape[a] for a in axes]))
    return [Encrypted(out, x.scale / count, 0.0, origin=node.name)]


@rule(*DATA_MOVEMENT)
def data_movement(builder: Builder, node: Node, args: list) -> list:
    """Run the op on element positions to learn where each output element comes from."""
    encrypted = [(i, a) for i, a in enumerate(args) if isinstance(a, Encrypted)]
    if node.op_type == "Pad":
        mode = node.attrs.get("mode", "constant")
        pad_value = args[2] if len(args) > 2 and args[2] is not None else 0.0
        if mode == "constant" and np.any(np.asarray(pad_value) != 0):
            raise ValueError(f"Pad node {node.name!r}: only zero padding is supported on encrypted values")
    if node.op_type == "Pad" or any(not v.affine for _, v in encrypted) or len(encrypted) > 1:
        # positions must mean the same number everywhere: integers on one scale, zero is zero
        encrypted = [(i, builder.materialize(v, f"{node.name}.input{i}")) for i, v in encrypted]
        scales = {builder.natural_scale(v) for _, v in encrypted}
        if len(scales) > 1:
            scale = max(scales)
            encrypted = [(i, builder.materialize(v, f"{node.name}.input{i}", scale=scale)) for i, v in encrypted]
    sources = [v.source for _, v in encrypted]
    position_args = list(args)
    base = 0
    for i, v in encrypted:
        sample = builder.sample_shape(v)
        size = int(np.prod(sample))
        positions = np.arange(base, base + size, dtype=np.float64).reshape(1, *sample)
        position_args[i] = np.broadcast_to(positions, (builder.batch, *sample))
        base += size
    if node.op_type == "Pad":
        position_args[2] = np.asarray(-1.0)
    positions = node.evaluate(*position_args)
    results = []
    for output_name, pos in zip(node.outputs, positions):
        pos = np.asarray(pos)
        if pos.shape[0] != builder.batch or not np.all(pos == pos[:1]):
            raise ValueError(f"{node.op_type} node {node.name!r} moves elements across the batch axis")
        index = pos[0].astype(np.int64)
        name = builder.fresh(output_name)
        if len(sources) == 1 and np.array_equal(index.ravel(), np.arange(index.size)) and base == index.size:
            out = builder.add(Reshape(node.name, sources, name, sample_shape=index.shape))
        else:
            out = builder.add(Index(node.name, sources, name, positions=index))
        first = encrypted[0][1]
        scale = _moved(builder, [v.scale for _, v in encrypted], encrypted, index)
        offset = _moved(builder, [v.offset for _, v in encrypted], encrypted, index)
        quantized = all(v.quantized for _, v in encrypted) and np.ndim(scale) == 0
        results.append(Encrypted(out, scale, offset, quantized=quantized, ops=first.ops, origin=first.origin))
    return results


def _moved(builder, arrays, encrypted, index) -> np.ndarray:
    """Move per-element scales or offsets exactly as the elements move."""
    if all(np.ndim(a) == 0 for a in arrays) and len({float(a) for a in arrays}) == 1:
        return arrays[0]
    flat = [np.broadcast_to(a, (1, *builder.sample_shape(v))).ravel() for a, (_, v) in zip(arrays, encrypted)]
    flat.append(np.zeros(1))  # padding positions (-1) read zero
    return np.concatenate(flat)[index][None]
