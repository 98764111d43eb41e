"""Reading ONNX graphs as exporters write them."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fheestimators.onnx.graph import Graph


def _model(list_initializer_as_input: bool) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), name="W")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    if list_initializer_as_input:  # what older exporters (and Keras converters) write
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 2]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"])],
        "g", inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])], initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("listed", [False, True])
def test_initializers_listed_as_inputs_are_constants(listed):
    graph = Graph.from_onnx(_model(listed))
    assert graph.inputs == ["x"]
    x = np.array([[1.0, -2.0, 0.5]])
    np.testing.assert_allclose(graph.run(x)[0], np.maximum(x @ np.arange(6).reshape(3, 2), 0))


def test_constant_subgraphs_are_folded():
    model = _model(False)
    model.graph.node.insert(0, helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]))
    graph = Graph.from_onnx(model)
    assert "Wt" in graph.constants and [n.op_type for n in graph.nodes] == ["MatMul", "Relu"]


def test_unsupported_op_is_named():
    model = _model(False)
    model.graph.node[1].op_type = "NonZero"
    with pytest.raises(ValueError, match="NonZero"):
        Graph.from_onnx(model)


def test_not_a_model():
    with pytest.raises(TypeError, match="ModelProto"):
        Graph.from_onnx("model.onnx")
