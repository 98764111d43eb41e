"""Float semantics of ONNX operators: one numpy function per op, in a registry.

Each function takes the node's inputs as numpy arrays (``None`` for an omitted
optional input) and its attributes as keyword arguments, already decoded to
Python values, and returns one array (or a tuple for multi-output ops).

The same functions serve the float graph (calibration) and the table lookups of
the quantized graph, where they run on arrays with a leading "table" axis
instead of the batch axis: they must broadcast and never assume a batch size.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import onnx
import scipy.special

OPS: dict[str, Callable[..., np.ndarray | tuple[np.ndarray, ...]]] = {}


def register(*op_types: str):
    """Add a function to the registry under one or more ONNX op types."""

    def decorator(func):
        for op_type in op_types:
            OPS[op_type] = func
        return func

    return decorator


# ----------------------------------------------------------------------------- helpers


def _ints(value) -> list[int] | None:
    """An int list from an attribute or an int64 input; ``None`` stays ``None``."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast with ONNX semantics, except that every float target is float64 (no lost precision)."""
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return x != 0
    if np.issubdtype(dtype, np.floating):
        return x.astype(np.float64)
    return x.astype(dtype)


def _unary(op_type: str, func: Callable[[np.ndarray], np.ndarray]) -> None:
    register(op_type)(lambda x, **_: func(np.asarray(x)))


def _binary(op_type: str, func: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    register(op_type)(lambda a, b, **_: func(np.asarray(a), np.asarray(b)))


# ----------------------------------------------------------------------------- elementwise math

for _name, _func in {
    "Abs": np.abs, "Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log,
    "Sign": np.sign, "Floor": np.floor, "Ceil": np.ceil,
    "Round": np.round,  # numpy rounds half to even, like ONNX
    "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos,
    "Atan": np.arctan, "Sinh": np.sinh, "Cosh": np.cosh, "Tanh": np.tanh,
    "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
    "Not": np.logical_not, "IsNaN": np.isnan,
}.items():
    _unary(_name, _func)

for _name, _func in {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "Greater": np.greater, "GreaterOrEqual": np.greater_equal, "Less": np.less,
    "LessOrEqual": np.less_equal, "Equal": np.equal,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}.items():
    _binary(_name, _func)


@register("Div")
def div(a, b, **_):
    """Integer inputs divide with truncation toward zero, as ONNX does."""
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return a / b


@register("Pow")
def pow_(x, y, **_):
    """The result has the type of the base, as in ONNX."""
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.integer):
        return np.power(x.astype(np.float64), y).astype(x.dtype)
    return np.power(x, y).astype(x.dtype, copy=False)


@register("Reciprocal")
def reciprocal(x, **_):
    return 1.0 / np.asarray(x)


@register("Erf")
def erf(x, **_):
    return scipy.special.erf(np.asarray(x))


@register("IsInf")
def isinf(x, detect_negative=1, detect_positive=1, **_):
    x = np.asarray(x)
    return (np.isneginf(x) & bool(detect_negative)) | (np.isposinf(x) & bool(detect_positive))


@register("Min")
def min_(*inputs, **_):
    return functools.reduce(np.minimum, map(np.asarray, inputs))


@register("Max")
def max_(*inputs, **_):
    return functools.reduce(np.maximum, map(np.asarray, inputs))


@register("Sum")
def sum_(*inputs, **_):
    return functools.reduce(np.add, map(np.asarray, inputs))


@register("Mean")
def mean(*inputs, **_):
    return sum_(*inputs) / len(inputs)


@register("Identity")
def identity(x, **_):
    return np.asarray(x)


@register("Dropout")
def dropout(x, *_inputs, **_):
    """Inference: the identity; the optional mask output is not produced."""
    return np.asarray(x)


@register("Cast")
def cast(x, to=1, **_):
    """``to`` is a TensorProto dtype; a float target keeps float64 (no downcast to float32)."""
    return _to_dtype(x, onnx.helper.tensor_dtype_to_np_dtype(int(to)))


@register("CastLike")
def cast_like(x, target_type, **_):
    return _to_dtype(x, np.asarray(target_type).dtype)


@register("Where")
def where(condition, x, y, **_):
    return np.where(np.asarray(condition).astype(bool), x, y)


# ----------------------------------------------------------------------------- activations


@register("Relu")
def relu(x, **_):
    x = np.asarray(x)
    return np.where(x > 0, x, np.zeros((), x.dtype))


@register("LeakyRelu")
def leaky_relu(x, alpha=0.01, **_):
    x = np.asarray(x)
    return np.where(x >= 0, x, alpha * x)


@register("PRelu")
def prelu(x, slope, **_):
    x = np.asarray(x)
    return np.where(x >= 0, x, np.asarray(slope) * x)


@register("Elu")
def elu(x, alpha=1.0, **_):
    x = np.asarray(x)
    return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))


@register("Selu")
def selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875, **_):
    x = np.asarray(x)
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@register("Celu")
def celu(x, alpha=1.0, **_):
    x = np.asarray(x)
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


@register("Sigmoid")
def sigmoid(x, **_):
    return scipy.special.expit(np.asarray(x))


@register("HardSigmoid")
def hard_sigmoid(x, alpha=0.2, beta=0.5, **_):
    return np.clip(alpha * np.asarray(x) + beta, 0, 1)


@register("HardSwish")
def hard_swish(x, **_):
    x = np.asarray(x)
    return x * np.clip(x / 6 + 0.5, 0, 1)


@register("Softplus")
def softplus(x, **_):
    return np.logaddexp(0, np.asarray(x))


@register("Softsign")
def softsign(x, **_):
    x = np.asarray(x)
    return x / (1 + np.abs(x))


@register("Mish")
def mish(x, **_):
    x = np.asarray(x)
    return x * np.tanh(np.logaddexp(0, x))


@register("Gelu")
def gelu(x, approximate="none", **_):
    x = np.asarray(x)
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


@register("Clip")
def clip(x, min=None, max=None, **_):  # noqa: A002 - the ONNX names, as inputs (opset >= 11) or attributes
    x = np.asarray(x)
    if min is not None and np.size(min):
        x = np.maximum(x, np.asarray(min, dtype=x.dtype))
    if max is not None and np.size(max):
        x = np.minimum(x, np.asarray(max, dtype=x.dtype))
    return x


@register("Shrink")
def shrink(x, bias=0.0, lambd=0.5, **_):
    x = np.asarray(x)
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, np.zeros((), x.dtype)))


@register("ThresholdedRelu")
def thresholded_relu(x, alpha=1.0, **_):
    x = np.asarray(x)
    return np.where(x > alpha, x, np.zeros((), x.dtype))


@register("Softmax")
def softmax(x, axis=-1, **_):
    """Opset >= 13 semantics: normalize along one axis."""
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@register("LogSoftmax")
def log_softmax(x, axis=-1, **_):
    """Opset >= 13 semantics: normalize along one axis."""
    x = np.asarray(x)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- shapes


@register("Shape")
def shape(x, start=0, end=None, **_):
    return np.array(np.shape(x)[start:end], dtype=np.int64)


@register("Size")
def size(x, **_):
    return np.array(np.size(x), dtype=np.int64)


@register("Reshape")
def reshape(data, shape=None, allowzero=0, **_):
    """With ``allowzero=0`` a 0 in ``shape`` copies the input's dimension; one -1 is inferred."""
    data = np.asarray(data)
    new_shape = _ints(shape)
    if not allowzero:
        new_shape = [data.shape[i] if d == 0 else d for i, d in enumerate(new_shape)]
    return data.reshape(new_shape)


@register("Flatten")
def flatten(x, axis=1, **_):
    x = np.asarray(x)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


@register("Transpose")
def transpose(x, perm=None, **_):
    return np.transpose(x, _ints(perm))


@register("Squeeze")
def squeeze(data, axes=None, **_):
    """``axes`` as the input (opset >= 13) or the attribute; none given squeezes every 1."""
    data = np.asarray(data)
    axes = _ints(axes)
    if not axes:
        return data.reshape([d for d in data.shape if d != 1])
    return np.squeeze(data, axis=tuple(axes))


@register("Unsqueeze")
def unsqueeze(data, axes=None, **_):
    """``axes`` (input or attribute) are positions in the output."""
    return np.expand_dims(data, tuple(_ints(axes)))


@register("Concat")
def concat(*inputs, axis=0, **_):
    return np.concatenate([np.asarray(x) for x in inputs], axis=axis)


@register("Slice")
def slice_(data, starts=None, ends=None, axes=None, steps=None, **_):
    """Out-of-range starts/ends are clamped as ONNX says (INT64_MAX / INT64_MIN for "to the end")."""
    data = np.asarray(data)
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = data.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            index[axis] = slice(start, end, step)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
    return data[tuple(index)]


@register("Gather")
def gather(data, indices, axis=0, **_):
    data, indices = np.asarray(data), np.asarray(indices).astype(np.int64)
    dim = data.shape[axis]
    return np.take(data, np.where(indices < 0, indices + dim, indices), axis=axis)


@register("Expand")
def expand(x, shape, **_):
    """Broadcast both ways: a 1 in ``shape`` keeps the input's dimension."""
    x = np.asarray(x)
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


@register("Tile")
def tile(x, repeats, **_):
    return np.tile(x, _ints(repeats))


@register("ConstantOfShape")
def constant_of_shape(shape, value=None, **_):
    value = np.zeros(1) if value is None else np.asarray(value)
    dtype = np.float64 if np.issubdtype(value.dtype, np.floating) else value.dtype
    return np.full(_ints(shape), value.reshape(-1)[0], dtype=dtype)


@register("Constant")
def constant(value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, **attrs):
    if value is not None:
        value = np.asarray(value)
        return value.astype(np.float64) if np.issubdtype(value.dtype, np.floating) else value
    if value_float is not None:
        return np.array(value_float, dtype=np.float64)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float64)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64)
    if value_string is not None:
        return np.array(value_string)
    if value_strings is not None:
        return np.array(value_strings)
    raise ValueError(f"Constant without a supported value attribute (got {sorted(attrs)})")


@register("Split")
def split(x, split=None, axis=0, num_outputs=None, **_):
    """``split`` as the input (opset >= 13) or the attribute, or ``num_outputs`` (opset 18),
    where the last chunk is the smaller one when the axis does not divide evenly."""
    x = np.asarray(x)
    sizes = _ints(split)
    if not sizes:
        if num_outputs is None:
            raise ValueError("Split needs the 'split' sizes or the 'num_outputs' attribute")
        dim = x.shape[axis]
        chunk = -(-dim // num_outputs)
        sizes = [chunk] * (num_outputs - 1) + [dim - chunk * (num_outputs - 1)]
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@register("Pad")
def pad(data, pads=None, constant_value=None, axes=None, mode="constant", value=0.0, **_):
    """``pads`` is [begin of each axis..., end of each axis...]; negative pads crop.
    ``pads``/``value`` may also come as attributes (opset < 11)."""
    data = np.asarray(data)
    pads = _ints(pads)
    axes = _ints(axes) if axes is not None else list(range(data.ndim))
    widths = [[0, 0] for _ in range(data.ndim)]
    for i, axis in enumerate(axes):
        widths[axis] = [pads[i], pads[i + len(axes)]]
    crop = tuple(slice(-min(b, 0), d + min(e, 0)) for (b, e), d in zip(widths, data.shape))
    data = data[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        fill = value if constant_value is None or not np.size(constant_value) else constant_value
        return np.pad(data, widths, mode="constant", constant_values=np.asarray(fill).reshape(-1)[0])
    if mode in ("reflect", "edge", "wrap"):
        return np.pad(data, widths, mode=mode)
    raise ValueError(f"Pad mode {mode!r} is not supported")


# ----------------------------------------------------------------------------- linear algebra


@register("MatMul")
def matmul(a, b, **_):
    return np.matmul(a, b)


@register("Gemm")
def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0, **_):  # noqa: N803 - ONNX names
    a, b = np.asarray(a), np.asarray(b)
    y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return y if c is None else y + beta * np.asarray(c)


def _spatial_pads(auto_pad, pads, in_shape, kernel, strides, dilations):
    """(begin, end) pads of each spatial axis, from explicit ``pads`` or ``auto_pad``."""
    rank = len(in_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        result = []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            result.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return result
    if auto_pad == "VALID" or pads is None:
        return [(0, 0)] * rank
    pads = _ints(pads)
    return [(pads[i], pads[i + rank]) for i in range(rank)]


def _windows(x, kernel, strides, dilations, out_shape):
    """View of shape (N, C, *out_shape, *kernel) of the (already padded) spatial windows of x."""
    rank = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(2, 2 + rank)))
    index = (
        (slice(None), slice(None))
        + tuple(slice(None, (o - 1) * s + 1, s) for o, s in zip(out_shape, strides))
        + tuple(slice(None, None, d) for d in dilations)
    )
    return view[index]


def _conv_like_defaults(x, kernel_shape, strides, dilations):
    rank = x.ndim - 2
    strides = _ints(strides) or [1] * rank
    dilations = _ints(dilations) or [1] * rank
    return _ints(kernel_shape), strides, dilations


@register("Conv")
def conv(x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None, **_):
    """N-d convolution (1D, 2D, ...) on (N, C, *spatial) inputs, grouped included."""
    x, w = np.asarray(x), np.asarray(w)
    kernel, strides, dilations = _conv_like_defaults(x, kernel_shape, strides, dilations)
    kernel = kernel or list(w.shape[2:])
    rank = len(kernel)
    widths = _spatial_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *widths])
    out_shape = [(size - (k - 1) * d - 1) // s + 1
                 for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations)]
    windows = _windows(x, kernel, strides, dilations, out_shape)  # (N, C, *out, *k)
    kernel_axes = list(range(2 + rank, 2 + 2 * rank))
    if group == 1:
        y = np.tensordot(windows, w, axes=([1, *kernel_axes], [1, *range(2, 2 + rank)]))
        y = np.moveaxis(y, -1, 1)  # (N, *out, M) -> (N, M, *out)
    else:
        n, channels = windows.shape[:2]
        windows = windows.reshape(n, group, channels // group, *windows.shape[2:])
        w = w.reshape(group, w.shape[0] // group, *w.shape[1:])
        out_letters = "pqrstu"[:rank]
        k_letters = "hijklm"[:rank]
        y = np.einsum(f"ngc{out_letters}{k_letters},gfc{k_letters}->ngf{out_letters}",
                      windows, w, optimize=True)
        y = y.reshape(n, -1, *y.shape[3:])
    if b is not None:
        y = y + np.asarray(b).reshape(-1, *[1] * rank)
    return y


def _pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    """Pads (begin, end), the extra end pad that ceil_mode needs, and the output shape."""
    kernel, strides, dilations = _conv_like_defaults(x, kernel_shape, strides, dilations)
    widths = _spatial_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    out_shape, extras = [], []
    for size, (begin, end), k, s, d in zip(x.shape[2:], widths, kernel, strides, dilations):
        span = (k - 1) * d + 1
        room = size + begin + end - span
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= size + begin:  # the last window must start inside
            out -= 1
        out_shape.append(out)
        extras.append(max(0, (out - 1) * s + span - (size + begin + end)))
    return kernel, strides, dilations, widths, extras, out_shape


@register("AveragePool")
def average_pool(x, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 kernel_shape=None, pads=None, strides=None, **_):
    """The divisor counts the pads only with ``count_include_pad``; never the extra cells
    that ``ceil_mode`` adds past the end pad."""
    x = np.asarray(x)
    kernel, strides, dilations, widths, extras, out_shape = _pool_geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    rank = len(kernel)
    full = [(0, 0), (0, 0)] + [(b, e + extra) for (b, e), extra in zip(widths, extras)]
    window_axes = tuple(range(2 + rank, 2 + 2 * rank))
    total = _windows(np.pad(x, full), kernel, strides, dilations, out_shape).sum(axis=window_axes)
    weight = np.ones((1, 1, *x.shape[2:]))
    if count_include_pad:
        weight = np.pad(weight, [(0, 0), (0, 0), *widths], constant_values=1.0)
        weight = np.pad(weight, [(0, 0), (0, 0)] + [(0, extra) for extra in extras])
    else:
        weight = np.pad(weight, full)
    count = _windows(weight, kernel, strides, dilations, out_shape).sum(axis=window_axes)
    return total / count


@register("MaxPool")
def max_pool(x, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             strides=None, **_):
    """Float inputs only; the optional Indices output is not produced."""
    x = np.asarray(x)
    kernel, strides, dilations, widths, extras, out_shape = _pool_geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    rank = len(kernel)
    full = [(0, 0), (0, 0)] + [(b, e + extra) for (b, e), extra in zip(widths, extras)]
    padded = np.pad(x, full, constant_values=-np.inf)
    return _windows(padded, kernel, strides, dilations, out_shape).max(
        axis=tuple(range(2 + rank, 2 + 2 * rank)))


@register("GlobalAveragePool")
def global_average_pool(x, **_):
    x = np.asarray(x)
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


@register("GlobalMaxPool")
def global_max_pool(x, **_):
    x = np.asarray(x)
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@register("BatchNormalization")
def batch_normalization(x, scale, b, input_mean, input_var, epsilon=1e-5, **_):
    """Inference mode (running statistics) whatever ``training_mode`` says; only Y is returned."""
    x = np.asarray(x)
    shape = (-1,) + (1,) * (x.ndim - 2)
    factor = np.asarray(scale) / np.sqrt(np.asarray(input_var) + epsilon)
    return (x - np.reshape(input_mean, shape)) * np.reshape(factor, shape) + np.reshape(b, shape)


# ----------------------------------------------------------------------------- reductions


def _reduction(op_type: str, func: Callable[..., np.ndarray]) -> None:
    @register(op_type)
    def reduce(data, axes=None, keepdims=1, noop_with_empty_axes=0, **_):
        """``axes`` as the input (opset 13 ReduceSum, opset 18 others) or the attribute."""
        data = np.asarray(data)
        axes = _ints(axes)
        if not axes:
            if noop_with_empty_axes:
                return data
            axes = list(range(data.ndim))
        return func(data, axis=tuple(axes), keepdims=bool(keepdims))

    reduce.__name__ = op_type


for _name, _func in {
    "ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min,
    "ReduceProd": np.prod,
    "ReduceSumSquare": lambda x, **kw: np.sum(x * x, **kw),
    "ReduceL1": lambda x, **kw: np.sum(np.abs(x), **kw),
    "ReduceL2": lambda x, **kw: np.sqrt(np.sum(x * x, **kw)),
    "ReduceLogSumExp": lambda x, **kw: scipy.special.logsumexp(x, **kw),
}.items():
    _reduction(_name, _func)

del _name, _func


def _arg_reduction(func: Callable[..., np.ndarray]):
    def arg(data, axis=0, keepdims=1, select_last_index=0, **_):
        data = np.asarray(data)
        if select_last_index:
            index = data.shape[axis] - 1 - func(np.flip(data, axis=axis), axis=axis)
        else:
            index = func(data, axis=axis)
        index = index.astype(np.int64)
        return np.expand_dims(index, axis) if keepdims else index

    return arg


register("ArgMax")(_arg_reduction(np.argmax))
register("ArgMin")(_arg_reduction(np.argmin))


def quant_bounds(bit_width: float, signed: int, narrow: int) -> tuple[int, int]:
    """Integer range of a QONNX ``Quant``: signed or not, narrow drops the lowest code."""
    bits = int(np.rint(np.asarray(bit_width)).item())
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


@register("Quant")
def quant(x, scale, zero_point, bit_width, signed=1, narrow=0, rounding_mode="ROUND", **_):
    """QONNX fake quantization (what Brevitas exports): ``scale * (clip(round(x/scale + zp)) - zp)``."""
    if str(rounding_mode).upper() not in ("ROUND", "ROUND_TO_ZERO", "FLOOR", "CEIL"):
        raise ValueError(f"Quant rounding_mode {rounding_mode!r} is not supported")
    low, high = quant_bounds(bit_width, signed, narrow)
    y = np.asarray(x, dtype=np.float64) / scale + zero_point
    mode = str(rounding_mode).upper()
    rounded = {"ROUND": np.rint, "ROUND_TO_ZERO": np.trunc, "FLOOR": np.floor, "CEIL": np.ceil}[mode](y)
    return scale * (np.clip(rounded, low, high) - zero_point)
