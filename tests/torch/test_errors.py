"""Clear errors for wrong inputs, settings and models; and the small public helpers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fheestimators.torch.compile import (
    build_quantized_module,
    compile_onnx_model,
    compile_torch_model,
    convert_torch_tensor_or_numpy_array_to_numpy_array,
    has_any_qnn_layers,
)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


INPUTSET = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def module():
    """Built, not compiled."""
    return build_quantized_module(mlp(), INPUTSET, n_bits=4)


# -- inputs at inference ----------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 5), (2, 2), (5,), (2, 3, 1)])
def test_wrong_feature_count_at_forward(module, shape):
    with pytest.raises(ValueError, match=r"shape .*expected \(n_samples, 3\)"):
        module.forward(np.zeros(shape))


def test_single_sample_without_batch_axis_is_accepted(module):
    assert module.forward(np.zeros(3)).shape == (1, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_input(module, bad):
    x = np.zeros((2, 3))
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        module.forward(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        module.quantize_input(x)


def test_string_input(module):
    with pytest.raises(TypeError, match="expected numbers"):
        module.forward(np.array([["a", "b", "c"]]))


def test_wrong_number_of_inputs(module):
    with pytest.raises(ValueError, match="takes 1 input"):
        module.forward(INPUTSET.numpy(), INPUTSET.numpy())


def test_float_input_to_the_integer_flow(module):
    with pytest.raises(TypeError, match="quantize_input"):
        module.forward_and_dequant(INPUTSET.numpy())
    with pytest.raises(TypeError, match="quantize_input"):
        module.quantized_forward(INPUTSET.numpy())


def test_wrong_number_of_outputs_to_dequantize(module):
    q = module.quantized_forward(module.quantize_input(INPUTSET.numpy()))
    with pytest.raises(ValueError, match="1 output"):
        module.dequantize_output(q, q)


# -- inputsets ----------------------------------------------------------------------
def test_nan_in_inputset():
    inputset = INPUTSET.clone()
    inputset[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        build_quantized_module(mlp(), inputset)
    with pytest.raises(ValueError, match="NaN or inf"):
        compile_torch_model(mlp(), inputset, n_bits=3)


@pytest.mark.parametrize("empty", [np.zeros((0, 3)), torch.zeros(0, 3)], ids=["numpy", "torch"])
def test_empty_inputset(empty):
    with pytest.raises(ValueError, match="empty"):
        build_quantized_module(mlp(), empty)


def test_string_inputset():
    with pytest.raises(TypeError, match="expected numbers"):
        build_quantized_module(mlp(), np.array([["a", "b", "c"]] * 4))


def test_inputset_of_the_wrong_type():
    with pytest.raises(TypeError, match="torch.Tensor or a numpy.ndarray"):
        build_quantized_module(mlp(), [[0.0, 1.0, 2.0]] * 4)


def test_onnx_inputset_count_mismatch():
    two_inputs = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["y"])], "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("a", "b")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 14)],
    )
    with pytest.raises(ValueError, match="takes 2 input.*inputset has 1"):
        build_quantized_module(two_inputs, INPUTSET.numpy())


# -- n_bits --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_bits, error, match",
    [
        (0, ValueError, "out of range"),
        (40, ValueError, "out of range"),
        (-3, ValueError, "out of range"),
        ({"op_inputs": 3}, ValueError, "op_weights"),
        ({"op_weights": 3}, ValueError, "op_inputs"),
        ({"op_inputs": 3, "op_weights": 3, "weights": 3}, ValueError, "unknown n_bits key.*weights"),
        ({"op_inputs": 3, "op_weights": 1}, ValueError, "op_weights.*out of range"),
        ({"op_inputs": 3.0, "op_weights": 3}, TypeError, "must be an int"),
        ({"op_inputs": 3, "op_weights": 3, "model_outputs": 2.0}, TypeError, "model_outputs.*must be an int"),
        (3.5, TypeError, "n_bits"),
        ("8", TypeError, "n_bits"),
        (True, TypeError, "n_bits"),
        (None, TypeError, "n_bits"),
    ],
    ids=repr,
)
def test_invalid_n_bits(n_bits, error, match):
    with pytest.raises(error, match=match):
        build_quantized_module(mlp(), INPUTSET, n_bits=n_bits)


def test_invalid_n_bits_error_names_the_key_the_user_wrote():
    with pytest.raises(TypeError, match="op_inputs"):
        build_quantized_module(mlp(), INPUTSET, n_bits={"op_inputs": 3.0, "op_weights": 3})


# -- unsupported models -----------------------------------------------------------------
class CumSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)


def test_unsupported_torch_op():
    with pytest.raises(ValueError, match="CumSum.*not supported|not supported.*CumSum"):
        build_quantized_module(CumSum(), INPUTSET)


def _single_op_onnx(op_type: str, **attrs) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph(
            [helper.make_node(op_type, ["x"], ["y"], **attrs)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 14)],
    )


def test_onnx_op_not_in_the_registry():
    with pytest.raises(ValueError, match="not supported.*Hardmax"):
        compile_onnx_model(_single_op_onnx("Hardmax"), INPUTSET.numpy())


def test_onnx_op_known_but_not_on_encrypted_values():
    with pytest.raises(ValueError, match="'Softmax'.*not supported on encrypted values"):
        build_quantized_module(_single_op_onnx("Softmax", axis=1), INPUTSET.numpy())


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc1(x) * self.fc2(x)


class EncryptedMatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc1(x).unsqueeze(2) @ self.fc2(x).unsqueeze(1)


def test_product_of_two_encrypted_tensors():
    with pytest.raises(ValueError, match="Mul between two different encrypted tensors"):
        build_quantized_module(Product(), INPUTSET)


def test_matmul_of_two_encrypted_tensors():
    with pytest.raises(ValueError, match="two encrypted tensors"):
        build_quantized_module(EncryptedMatMul(), INPUTSET)


def test_wrong_model_types():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        compile_torch_model("not a model", INPUTSET)
    with pytest.raises(TypeError, match="onnx.ModelProto"):
        compile_onnx_model(mlp(), INPUTSET)
    with pytest.raises(TypeError, match="torch.nn.Module or an onnx.ModelProto"):
        build_quantized_module(object(), INPUTSET)


# -- modes and compilation --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bogus", "", None, 1, "fhe"])
def test_invalid_fhe_mode(module, mode):
    with pytest.raises(ValueError, match="not a valid mode"):
        module.forward(INPUTSET.numpy(), fhe=mode)


def test_modes_are_case_insensitive(module):
    np.testing.assert_array_equal(module.forward(INPUTSET.numpy(), fhe="DISABLE"), module.forward(INPUTSET.numpy()))


@pytest.mark.parametrize("mode", ["simulate", "execute"])
def test_simulate_or_execute_before_compile(module, mode):
    assert module.fhe_circuit is None
    with pytest.raises(RuntimeError, match="not compiled"):
        module.forward(INPUTSET.numpy(), fhe=mode)
    with pytest.raises(RuntimeError, match="not compiled"):
        module.forward_fhe  # noqa: B018


@pytest.mark.parametrize("setting", [{"p_error": 2.0}, {"p_error": 0.0}, {"p_error": -0.1},
                                     {"global_p_error": 1.0}, {"global_p_error": "0.1"}])
def test_error_probabilities_outside_0_1_are_refused(setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name}=.* is not a probability in \\(0, 1\\)"):
        compile_torch_model(mlp(), INPUTSET, n_bits=3, **setting)


def test_p_error_and_global_p_error_both_given():
    with pytest.raises(ValueError, match="p_error or global_p_error, not both"):
        compile_torch_model(mlp(), INPUTSET, n_bits=3, p_error=0.01, global_p_error=0.01)


@pytest.mark.parametrize(
    "status, match",
    [(["clear"], "at least one input must be encrypted"), (["secret"], "not 'encrypted' or 'clear'"),
     (["encrypted", "encrypted"], "2 entries for 1 input")],
)
def test_invalid_inputs_encryption_status(status, match):
    with pytest.raises(ValueError, match=match):
        compile_torch_model(mlp(), INPUTSET, n_bits=3, inputs_encryption_status=status)


class WideLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(200, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.wide(x)))


def test_lookup_wider_than_16_bits_is_refused_before_concrete():
    torch.manual_seed(0)
    inputset = torch.randn(50, 200)
    module = build_quantized_module(WideLinear(), inputset, n_bits=12)
    assert max(r.lookup_bits for r in module.layer_reports()) > 16
    with pytest.raises(ValueError, match=r"layer '/wide/[^']*'.*the limit is 16"):
        compile_torch_model(WideLinear(), inputset, n_bits=12)


# -- helpers ----------------------------------------------------------------------------
def test_has_any_qnn_layers():
    import brevitas.nn as qnn

    qat_model = nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantLinear(3, 4, bias=True, weight_bit_width=4),
        nn.ReLU(),
    )
    assert has_any_qnn_layers(qat_model) is True
    assert has_any_qnn_layers(mlp()) is False
    assert has_any_qnn_layers(nn.Sequential(nn.Sequential(qnn.QuantReLU(bit_width=3)))) is True


def test_convert_torch_tensor_or_numpy_array_to_numpy_array():
    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    converted = convert_torch_tensor_or_numpy_array_to_numpy_array(tensor)
    assert isinstance(converted, np.ndarray)
    np.testing.assert_array_equal(converted, np.arange(6).reshape(2, 3))
    array = np.ones((2, 2))
    assert convert_torch_tensor_or_numpy_array_to_numpy_array(array) is array
    with pytest.raises(TypeError, match="list"):
        convert_torch_tensor_or_numpy_array_to_numpy_array([1.0, 2.0])
    with pytest.raises(TypeError):
        convert_torch_tensor_or_numpy_array_to_numpy_array(3.0)


# -- the overflow error advises what the function called accepts ----------------------------
def _too_wide_brevitas_model() -> nn.Module:
    import brevitas.nn as qnn

    torch.manual_seed(0)
    return nn.Sequential(
        qnn.QuantIdentity(bit_width=8, return_quant_tensor=True),
        qnn.QuantLinear(200, 4, bias=True, weight_bit_width=8),
        nn.ReLU(),
        qnn.QuantIdentity(bit_width=8, return_quant_tensor=True),
        qnn.QuantLinear(4, 2, bias=True, weight_bit_width=8),
    ).eval()


WIDE_INPUTSET = torch.randn(50, 200, generator=torch.Generator().manual_seed(0))
PTQ_ADVICE = ("lower n_bits", "set rounding_threshold_bits", "torch.nn.utils.prune")


@pytest.mark.parametrize("door", ["compile_torch_model", "build_quantized_module"])
def test_overflow_error_of_the_torch_functions_advises_their_settings(door):
    with pytest.raises(ValueError, match="the limit is 16 bits") as error:
        if door == "compile_torch_model":
            compile_torch_model(WideLinear(), WIDE_INPUTSET, n_bits=12)
        else:
            build_quantized_module(WideLinear(), WIDE_INPUTSET, n_bits=12).compile(WIDE_INPUTSET.numpy())
    assert all(advice in str(error.value) for advice in PTQ_ADVICE)
    assert "max_non_zero" not in str(error.value)  # an estimators' setting, not these functions'


def test_overflow_error_of_compile_onnx_model_advises_pruning_before_export():
    from fheestimators.onnx.export import torch_to_onnx

    onnx_model = torch_to_onnx(WideLinear().eval(), [WIDE_INPUTSET[:2]])
    with pytest.raises(ValueError, match="the limit is 16 bits") as error:
        compile_onnx_model(onnx_model, WIDE_INPUTSET.numpy(), n_bits=12)
    message = str(error.value)
    assert "lower n_bits" in message and "set rounding_threshold_bits" in message
    assert "prune the model's weights before exporting it to ONNX" in message
    assert "max_non_zero" not in message


def test_overflow_error_of_compile_brevitas_qat_model_advises_the_brevitas_quantizers():
    from fheestimators.torch.compile import compile_brevitas_qat_model

    with pytest.raises(ValueError, match="the limit is 16 bits") as error:
        compile_brevitas_qat_model(_too_wide_brevitas_model(), WIDE_INPUTSET, rounding_threshold_bits=None)
    message = str(error.value)
    assert "give the Brevitas quantizers fewer bits (weight_bit_width, bit_width)" in message
    assert "rounding_threshold_bits" in message and "torch.nn.utils.prune" in message
    assert "lower n_bits" not in message and "max_non_zero" not in message  # other functions' settings


def test_accumulator_overflow_error_advises_bits_and_pruning_not_rounding():
    # a last layer has no lookup to round: only fewer bits or fewer weights shrink it
    with pytest.raises(ValueError, match="produces 3.-bit integers over the inputs' clip ranges") as error:
        compile_torch_model(nn.Linear(200, 2).eval(), WIDE_INPUTSET, n_bits=16)
    message = str(error.value)
    assert "lower n_bits" in message and "torch.nn.utils.prune" in message
    assert "rounding_threshold_bits" not in message and "max_non_zero" not in message


# -- the overflow error names a setting that compiles -----------------------------------------
class SmallCNN(nn.Module):
    """4 filters of 3x3 on 8x8 images: 8-bit inputs and weights make 19-bit accumulators."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_overflow_error_names_a_setting_that_compiles_with_its_cost(monkeypatch, tmp_path):
    import re

    monkeypatch.setenv("FHEESTIMATORS_COST_MODEL", str(tmp_path / "absent.json"))
    torch.manual_seed(0)
    model = SmallCNN().eval()
    images = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="the limit is 16 bits") as error:
        compile_torch_model(model, images)
    message = str(error.value)
    found = re.search(r"compile_torch_model\(\.\.\., (n_bits=(\d+), )?rounding_threshold_bits=(\d+)\) compiles: "
                      r"(\d+) bootstraps .* predicted [\d.e+]+ s per encrypted sample", message)
    assert found, message
    n_bits = int(found[2]) if found[2] else 8
    module = compile_torch_model(model, images, n_bits=n_bits, rounding_threshold_bits=int(found[3]))
    assert module.fhe_circuit.programmable_bootstrap_count == int(found[4])
    assert f"{module.cost().seconds_per_sample:.2g} s per encrypted sample" in message
