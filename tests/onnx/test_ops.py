"""The numpy semantics of each ONNX op, checked against onnx's ReferenceEvaluator and torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from fheestimators.onnx.graph import _attribute_value
from fheestimators.onnx.ops import OPS

RNG = np.random.default_rng(0)
INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def f(*shape, low=-3.0, high=3.0):
    """A float32 input, as the reference evaluator wants."""
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def boolean(*shape):
    return RNG.integers(0, 2, size=shape).astype(bool)


def case(op, inputs, attrs=None, opset=18, n_outputs=1, id=None):  # noqa: A002
    return pytest.param(op, inputs, attrs or {}, opset, n_outputs, id=id or op)


X = f(2, 3, 4)
POSITIVE = f(2, 3, 4, low=0.1, high=4.0)
UNIT = f(2, 3, 4, low=-0.95, high=0.95)
IMAGE = f(2, 4, 7, 7)
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -1.5, 2.0], dtype=np.float32)
HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6], dtype=np.float32)

UNARY = ["Abs", "Neg", "Exp", "Erf", "Sign", "Floor", "Ceil", "Identity", "Relu", "LeakyRelu",
         "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
         "Softsign", "Mish", "Shrink", "ThresholdedRelu", "Sin", "Cos", "Tan", "Atan", "Sinh",
         "Cosh", "Asinh", "Softmax", "LogSoftmax"]
BINARY = ["Add", "Sub", "Mul", "Div", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal"]
REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
              "ReduceL1", "ReduceL2", "ReduceLogSumExp"]

CASES = [
    *(case(op, [X]) for op in UNARY),
    *(case(op, [X, f(4)]) for op in BINARY),
    *(case(op, [boolean(3, 4), boolean(4)]) for op in ["And", "Or", "Xor"]),
    *(case(op, [POSITIVE]) for op in ["Sqrt", "Log", "Reciprocal"]),
    *(case(op, [UNIT]) for op in ["Asin", "Acos", "Atanh"]),
    case("Acosh", [POSITIVE + 1]),
    case("Round", [HALVES], id="Round-half-to-even"),
    case("Div", [i64(7, -7, 7, -7), i64(2, 2, -2, -2)], id="Div-int-truncates"),
    case("Pow", [POSITIVE, f(4)]),
    case("Pow", [X, np.array(2.0, dtype=np.float32)], id="Pow-square"),
    case("Equal", [i64(1, 2, 3), i64(1, 0, 3)], id="Equal-int"),
    case("Not", [boolean(3, 4)]),
    case("IsNaN", [SPECIAL]),
    case("IsInf", [SPECIAL]),
    case("IsInf", [SPECIAL], {"detect_negative": 0}, id="IsInf-positive"),
    case("Where", [boolean(3, 4), f(3, 4), f(4)]),
    *(case(op, [f(3, 4), f(4), f(1, 4)]) for op in ["Min", "Max", "Sum", "Mean"]),
    case("Max", [X], id="Max-single"),
    case("Dropout", [X], {"seed": 3}),
    case("Cast", [X], {"to": TensorProto.INT64}, id="Cast-float-to-int"),
    case("Cast", [i64(1, -2, 3)], {"to": TensorProto.FLOAT}, id="Cast-int-to-float"),
    case("Cast", [np.array([0.0, 1.5, -2.0], dtype=np.float32)], {"to": TensorProto.BOOL},
         id="Cast-to-bool"),
    case("CastLike", [X, i64(0)]),
    case("CastLike", [i64(1, 2), np.zeros(1, np.float32)], id="CastLike-to-float"),
    # activations with attributes
    case("LeakyRelu", [X], {"alpha": 0.3}, id="LeakyRelu-alpha"),
    case("PRelu", [IMAGE, f(4, 1, 1)]),
    case("PRelu", [X, f(4)], id="PRelu-last-axis"),
    case("Elu", [X], {"alpha": 0.5}, id="Elu-alpha"),
    case("Selu", [X], {"alpha": 1.5, "gamma": 2.0}, id="Selu-attrs"),
    case("Celu", [X], {"alpha": 2.0}, id="Celu-alpha"),
    case("HardSigmoid", [X], {"alpha": 0.3, "beta": 0.4}, id="HardSigmoid-attrs"),
    case("Shrink", [X], {"bias": 0.7, "lambd": 1.0}, id="Shrink-attrs"),
    case("ThresholdedRelu", [X], {"alpha": 0.5}, id="ThresholdedRelu-alpha"),
    case("Gelu", [X], opset=20),
    case("Gelu", [X], {"approximate": "tanh"}, opset=20, id="Gelu-tanh"),
    case("Clip", [X, np.array(-1.0, np.float32)], id="Clip-min-only"),
    case("Clip", [X, None, np.array(0.5, np.float32)], id="Clip-max-only"),
    case("Clip", [X, np.array(-1.0, np.float32), np.array(0.5, np.float32)], id="Clip-both"),
    case("Clip", [X], id="Clip-none"),
    case("Clip", [X], {"min": -0.5, "max": 1.0}, opset=6, id="Clip-opset6-attrs"),
    case("Softmax", [X], {"axis": 1}, id="Softmax-axis1"),
    case("LogSoftmax", [X], {"axis": 0}, id="LogSoftmax-axis0"),
    # shapes
    case("Shape", [X]),
    case("Shape", [X], {"start": 1, "end": -1}, opset=15, id="Shape-start-end"),
    case("Size", [X]),
    case("Reshape", [X, i64(0, -1)], id="Reshape-zero-and-minus-one"),
    case("Reshape", [X, i64(4, -1, 2)], id="Reshape-infer-middle"),
    case("Reshape", [np.zeros((0, 3), np.float32), i64(3, 0)], {"allowzero": 1},
         id="Reshape-allowzero"),
    case("Flatten", [X]),
    case("Flatten", [X], {"axis": 0}, id="Flatten-axis0"),
    case("Flatten", [X], {"axis": -1}, id="Flatten-axis-1"),
    case("Transpose", [X]),
    case("Transpose", [X], {"perm": [1, 0, 2]}, id="Transpose-perm"),
    case("Squeeze", [f(2, 1, 3, 1), i64(1)]),
    case("Squeeze", [f(2, 1, 3, 1)], id="Squeeze-all"),
    case("Squeeze", [f(2, 1, 3, 1)], {"axes": [-1]}, opset=11, id="Squeeze-opset11-attr"),
    case("Unsqueeze", [X, i64(0, -1)]),
    case("Unsqueeze", [X], {"axes": [1, 4]}, opset=11, id="Unsqueeze-opset11-attr"),
    case("Concat", [f(2, 1, 4), f(2, 3, 4), f(2, 2, 4)], {"axis": 1}),
    case("Concat", [i64(1, 2), i64(-1)], {"axis": -1}, id="Concat-int"),
    case("Slice", [X, i64(0, 1), i64(2, INT64_MAX), i64(1, 2)]),
    case("Slice", [X, i64(-1, INT64_MAX), i64(INT64_MIN, 0), i64(2, 1), i64(-2, -1)],
         id="Slice-negative-steps"),
    case("Slice", [X, i64(-10), i64(10)], id="Slice-clamped"),
    case("Slice", [X, i64(1, 3), i64(-1, 0), i64(0, 2), i64(1, -1)], id="Slice-mixed-steps"),
    case("Slice", [X], {"starts": [1], "ends": [3], "axes": [2]}, opset=9, id="Slice-opset9-attrs"),
    case("Gather", [X, i64(-1, 0)]),
    case("Gather", [X, np.array([[0, 2], [-1, 1]], dtype=np.int64)], {"axis": 2},
         id="Gather-2d-indices"),
    case("Gather", [X, np.array(-2, dtype=np.int64)], {"axis": 1}, id="Gather-scalar-index"),
    case("Expand", [f(3, 1), i64(2, 1, 4)]),
    case("Tile", [f(2, 3), i64(2, 2)]),
    case("ConstantOfShape", [i64(2, 3)]),
    case("ConstantOfShape", [i64(2)], {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])},
         id="ConstantOfShape-int-value"),
    case("Constant", [], {"value": helper.make_tensor("v", TensorProto.FLOAT, [2], [1.5, -2])}),
    case("Constant", [], {"value_float": 2.5}, id="Constant-value_float"),
    case("Constant", [], {"value_floats": [1.0, 2.0]}, id="Constant-value_floats"),
    case("Constant", [], {"value_int": 4}, id="Constant-value_int"),
    case("Constant", [], {"value_ints": [4, 5]}, id="Constant-value_ints"),
    case("Split", [f(2, 6), i64(1, 5)], {"axis": 1}, opset=13, n_outputs=2),
    case("Split", [f(7, 2)], {"num_outputs": 3}, n_outputs=3, id="Split-num_outputs-uneven"),
    case("Split", [f(2, 6)], {"axis": -1, "num_outputs": 2}, n_outputs=2, id="Split-num_outputs"),
    case("Split", [f(2, 6)], {"axis": 1, "split": [2, 4]}, opset=11, n_outputs=2,
         id="Split-opset11-attr"),
    case("Pad", [IMAGE, i64(0, 0, 1, 2, 0, 0, 2, 1), np.array(0.5, np.float32)]),
    case("Pad", [IMAGE, i64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "reflect"}, id="Pad-reflect"),
    case("Pad", [IMAGE, i64(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "edge"}, id="Pad-edge"),
    case("Pad", [IMAGE, i64(1, 2, 0, 3), None, i64(-1, 1)], id="Pad-axes"),
    case("Pad", [f(3, 4)], {"pads": [1, 0, 0, 2], "value": 1.5}, opset=2, id="Pad-opset2-attrs"),
    # linear
    case("MatMul", [f(2, 3, 4), f(4, 5)]),
    case("Gemm", [f(3, 4), f(4, 5)]),
    case("Gemm", [f(3, 4), f(5, 4), f(5)], {"transB": 1, "alpha": 0.5, "beta": 2.0},
         id="Gemm-transB-alpha-beta"),
    case("Gemm", [f(4, 3), f(4, 5), f(3, 1)], {"transA": 1}, id="Gemm-transA"),
    case("Conv", [IMAGE, f(5, 4, 3, 3)]),
    case("Conv", [IMAGE, f(5, 4, 3, 3), f(5)], {"strides": [2, 2], "pads": [1, 1, 1, 1]},
         id="Conv-stride2-pad-bias"),
    case("Conv", [IMAGE, f(6, 2, 3, 3)], {"group": 2, "pads": [0, 1, 2, 1]}, id="Conv-group2"),
    case("Conv", [IMAGE, f(8, 1, 2, 2)], {"group": 4, "strides": [2, 1]}, id="Conv-depthwise"),
    case("Conv", [IMAGE, f(3, 4, 3, 2)], {"dilations": [2, 3]}, id="Conv-dilation"),
    case("Conv", [IMAGE, f(3, 4, 3, 3)], {"auto_pad": "SAME_UPPER"}, id="Conv-same-upper"),
    case("Conv", [IMAGE, f(3, 4, 4, 4)], {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
         id="Conv-same-lower-stride2"),
    case("Conv", [IMAGE, f(3, 4, 3, 3)], {"auto_pad": "VALID", "strides": [2, 2]}, id="Conv-valid"),
    case("Conv", [f(2, 4, 9), f(6, 2, 3), f(6)], {"group": 2, "strides": [2], "pads": [1, 2]},
         id="Conv-1d"),
    case("AveragePool", [IMAGE], {"kernel_shape": [3, 3]}),
    case("AveragePool", [IMAGE], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
         id="AveragePool-pad-exclude"),
    case("AveragePool", [IMAGE], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2],
                                  "count_include_pad": 1}, id="AveragePool-pad-include"),
    case("AveragePool", [IMAGE], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
         id="AveragePool-ceil"),
    case("AveragePool", [f(2, 3, 6, 6)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                          "pads": [1, 1, 1, 1], "count_include_pad": 1},
         id="AveragePool-ceil-include-pad"),
    case("AveragePool", [IMAGE], {"kernel_shape": [3, 2], "auto_pad": "SAME_UPPER"},
         id="AveragePool-same"),
    case("AveragePool", [f(2, 3, 8)], {"kernel_shape": [3], "strides": [2], "pads": [1, 0]},
         id="AveragePool-1d"),
    case("AveragePool", [IMAGE], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=19,
         id="AveragePool-dilation"),
    case("MaxPool", [IMAGE], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    case("MaxPool", [IMAGE], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
         id="MaxPool-pad"),
    case("MaxPool", [IMAGE], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
         id="MaxPool-ceil"),
    case("MaxPool", [IMAGE], {"kernel_shape": [2, 2], "dilations": [2, 2]}, id="MaxPool-dilation"),
    case("MaxPool", [IMAGE], {"kernel_shape": [3, 2], "auto_pad": "SAME_LOWER"},
         id="MaxPool-same-lower"),
    case("MaxPool", [IMAGE], {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
         id="MaxPool-same-upper-stride2"),
    case("MaxPool", [f(2, 3, 8)], {"kernel_shape": [3], "strides": [2], "pads": [1, 0]},
         id="MaxPool-1d"),
    case("GlobalAveragePool", [IMAGE]),
    case("GlobalMaxPool", [IMAGE]),
    case("BatchNormalization", [IMAGE, f(4), f(4), f(4), f(4, low=0.5, high=2.0)]),
    case("BatchNormalization", [f(5, 4), f(4), f(4), f(4), f(4, low=0.5, high=2.0)],
         {"epsilon": 0.1}, id="BatchNormalization-2d-epsilon"),
    # reductions
    *(case(op, [X, i64(1)], id=f"{op}-axis") for op in REDUCTIONS),
    *(case(op, [X, i64(0, -1)], {"keepdims": 0}, id=f"{op}-no-keepdims") for op in REDUCTIONS),
    *(case(op, [X], id=f"{op}-all") for op in REDUCTIONS),
    *(case(op, [X], {"axes": [0, 2]}, opset=11, id=f"{op}-opset11-attr") for op in REDUCTIONS),
    case("ReduceSum", [X, i64(-1)], opset=13, id="ReduceSum-opset13-input"),
    case("ReduceMean", [X, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1},
         id="ReduceMean-noop"),
    case("ArgMax", [X]),
    case("ArgMax", [X], {"axis": -1, "keepdims": 0}, id="ArgMax-last-axis"),
    case("ArgMax", [np.round(X)], {"axis": 1, "select_last_index": 1}, id="ArgMax-last-index"),
    case("ArgMin", [np.round(X)], {"axis": 2}),
]


def _reference(op, inputs, attrs, opset, n_outputs):
    names = ["" if value is None else f"x{i}" for i, value in enumerate(inputs)]
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outputs, **attrs)
    graph = helper.make_graph(
        [node], "single_op",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
         for name, value in zip(names, inputs) if value is not None],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {name: value for name, value in zip(names, inputs) if value is not None}
    return ReferenceEvaluator(model).run(None, feeds), node


def _as_ours(value):
    if value is None:
        return None
    return value.astype(np.float64) if value.dtype == np.float32 else value


@pytest.mark.parametrize("op, inputs, attrs, opset, n_outputs", CASES)
def test_op_matches_onnx_reference(op, inputs, attrs, opset, n_outputs):
    expected, node = _reference(op, inputs, attrs, opset, n_outputs)
    decoded = {a.name: _attribute_value(a) for a in node.attribute}
    result = OPS[op](*[_as_ours(value) for value in inputs], **decoded)
    results = result if isinstance(result, tuple) else (result,)
    assert len(results) == n_outputs
    for ours, theirs in zip(results, expected):
        ours = np.asarray(ours)
        theirs = np.asarray(theirs)
        assert ours.shape == theirs.shape
        assert ours.dtype == (np.float64 if theirs.dtype.kind == "f" else theirs.dtype)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


TORCH_CASES = [
    ("Celu", {"alpha": 1.3}, lambda t: F.celu(t, alpha=1.3)),
    ("Elu", {}, F.elu),
    ("Elu", {"alpha": 0.4}, lambda t: F.elu(t, alpha=0.4)),
    ("Selu", {}, F.selu),
    ("HardSigmoid", {"alpha": 1 / 6}, F.hardsigmoid),
    ("HardSwish", {}, F.hardswish),
    ("Mish", {}, F.mish),
    ("Softplus", {}, F.softplus),
    ("Softsign", {}, F.softsign),
    ("LeakyRelu", {}, F.leaky_relu),
    ("LeakyRelu", {"alpha": 0.2}, lambda t: F.leaky_relu(t, 0.2)),
    ("Shrink", {"bias": 0.7, "lambd": 0.7}, lambda t: F.softshrink(t, 0.7)),
    ("Shrink", {"lambd": 0.7}, lambda t: F.hardshrink(t, 0.7)),
    ("Sigmoid", {}, torch.sigmoid),
    ("Gelu", {}, F.gelu),
    ("Gelu", {"approximate": "tanh"}, lambda t: F.gelu(t, approximate="tanh")),
]


@pytest.mark.parametrize("op, attrs, torch_fn", TORCH_CASES,
                         ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(TORCH_CASES)])
def test_activation_matches_torch(op, attrs, torch_fn):
    x = np.linspace(-8, 8, 321)
    expected = torch_fn(torch.tensor(x, dtype=torch.float64)).numpy()
    result = OPS[op](x, **attrs)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Elu", "HardSwish", "Softplus", "Tanh"])
def test_activation_broadcasts_over_a_table_axis(op):
    """A leading table axis of 2**8 and a trailing (1, 3) shape: same values as one row at a time."""
    table = np.linspace(-4, 4, 256 * 3).reshape(256, 1, 3)
    result = OPS[op](table)
    assert result.shape == (256, 1, 3) and result.dtype == np.float64
    rows = np.stack([OPS[op](row) for row in table])
    np.testing.assert_allclose(result, rows, rtol=1e-12, atol=0)
    slope = np.array([[0.1, 0.2, 0.3]])
    prelu = OPS["PRelu"](table, slope)
    assert prelu.shape == (256, 1, 3)
    np.testing.assert_allclose(prelu, np.where(table >= 0, table, table * slope))


REQUIRED_OPS = [
    "Abs", "Neg", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Erf",
    "Sign", "Floor", "Ceil", "Round", "Min", "Max", "Sum", "Mean", "Identity", "Dropout", "Cast",
    "CastLike",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Clip", "Shrink", "ThresholdedRelu", "Sin", "Cos",
    "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "Not", "And", "Or", "Xor",
    "Where", "IsNaN", "IsInf",
    "Shape", "Size", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Slice",
    "Gather", "Expand", "Tile", "ConstantOfShape", "Constant", "Split", "Pad",
    "Gemm", "MatMul", "Conv", "AveragePool", "GlobalAveragePool", "MaxPool", "BatchNormalization",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "Softmax", "LogSoftmax", "ArgMax",
]


def test_required_ops_are_registered():
    assert not [op for op in REQUIRED_OPS if op not in OPS]


# QONNX ops are not in onnx's reference evaluator: they are checked against Brevitas' formula.
CUSTOM_OPS = {"Quant"}


def test_every_registered_op_has_a_reference_case():
    tested = {param.values[0] for param in CASES}
    assert set(OPS) - CUSTOM_OPS <= tested


@pytest.mark.parametrize("signed, narrow, low, high", [(1, 0, -4, 3), (1, 1, -3, 3), (0, 0, 0, 7), (0, 1, 0, 6)])
def test_quant_matches_brevitas_formula(signed, narrow, low, high):
    x = np.linspace(-3, 3, 61)
    scale, zero_point = 0.25, 0.0
    expected = scale * (np.clip(np.round(x / scale + zero_point), low, high) - zero_point)
    np.testing.assert_array_equal(OPS["Quant"](x, scale, zero_point, 3.0, signed=signed, narrow=narrow), expected)


@pytest.mark.parametrize("op, inputs, attrs", [
    ("ReduceSum", [X.astype(np.float64)], {"axes": [1], "keepdims": 0}),
    ("Squeeze", [np.zeros((2, 1, 3))], {"axes": [1]}),
    ("Unsqueeze", [X.astype(np.float64)], {"axes": [0]}),
])
def test_axes_accepted_as_input_or_attribute(op, inputs, attrs):
    axes = np.array(attrs.pop("axes"), dtype=np.int64)
    np.testing.assert_array_equal(OPS[op](*inputs, axes, **attrs),
                                  OPS[op](*inputs, axes=list(axes), **attrs))


def test_split_without_sizes_or_num_outputs_is_an_error():
    with pytest.raises(ValueError, match="num_outputs"):
        OPS["Split"](np.zeros((4, 2)))


def test_negative_pads_crop():
    """The reference evaluator refuses negative pads; ONNX says they remove cells."""
    x = np.arange(20.0).reshape(4, 5)
    result = OPS["Pad"](x, i64(-1, 2, 1, -2))
    expected = np.pad(x[1:, :3], [(0, 1), (2, 0)])
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_same_lower_with_stride_puts_the_odd_pad_first(op):
    """SAME_LOWER, stride 2 on 7 cells: ceil(7 / 2) = 4 outputs (the reference MaxPool makes 3)."""
    x = IMAGE.astype(np.float64)
    attrs = {"kernel_shape": [3, 2], "strides": [2, 2]}
    same = OPS[op](x, auto_pad="SAME_LOWER", **attrs)
    explicit = OPS[op](x, pads=[1, 1, 1, 0], **attrs)
    assert same.shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(same, explicit)
