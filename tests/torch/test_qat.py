"""Quantization-aware training (QAT) import: Brevitas models and generic fake-quantized models.

Covers ``compile_brevitas_qat_model``, ``compile_torch_model(..., import_qat=True)``,
``compile_onnx_model(..., import_qat=True)``, ``build_quantized_module`` and
``has_any_qnn_layers`` on the networks of the specification pages 000 (QATSimpleNet),
001 (QuantSimpleNet) and 002 (QATPrunedSimpleNet with the CommonQuant injectors), a
checkerboard-trained QAT model, a tiny network run encrypted, a Conv2d/AvgPool2d
Brevitas model, generic QAT import and the error paths.

Compiled modules are shared through module-scoped fixtures: a Brevitas export plus a
compilation costs a few seconds, key generation a few more.
"""
from __future__ import annotations

import io

import brevitas.nn as qnn
import numpy as np
import onnx
import pytest
import torch
import torch.nn.utils.prune as prune
from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.quant import QuantType
from brevitas.core.restrict_val import FloatToIntImplType, RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject import ExtendedInjector
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from dependencies import value
from torch import nn

from fheestimators.datasets import make_checkerboard
from fheestimators.quantization.steps import MatMul
from fheestimators.quantization.tabulate import tabulation_limit
from fheestimators.torch.compile import (
    build_quantized_module,
    compile_brevitas_qat_model,
    compile_onnx_model,
    compile_torch_model,
    has_any_qnn_layers,
)

pytestmark = pytest.mark.filterwarnings("ignore")

FIDELITY_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def untabulated_builds():
    """These tests check each layer's lookups and rounding; on their 2-feature inputs the
    networks would otherwise be tabulated (tests/quantization/test_tabulate.py)."""
    with tabulation_limit(0):
        yield


# ---------------------------------------------------------------------------
# The specification's networks, as written on the pages (sizes given at construction)
# ---------------------------------------------------------------------------

# -- page 000: QATSimpleNet ------------------------------------------------------
N_FEAT = 12
n_bits = 3


class QATSimpleNet(nn.Module):
    def __init__(self, n_hidden):
        super().__init__()

        self.quant_inp = qnn.QuantIdentity(bit_width=n_bits, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(N_FEAT, n_hidden, True, weight_bit_width=n_bits, bias_quant=None)
        self.quant2 = qnn.QuantIdentity(bit_width=n_bits, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(n_hidden, n_hidden, True, weight_bit_width=3, bias_quant=None)
        self.quant3 = qnn.QuantIdentity(bit_width=n_bits, return_quant_tensor=True)
        self.fc3 = qnn.QuantLinear(n_hidden, 2, True, weight_bit_width=n_hidden, bias_quant=None)

    def forward(self, x):
        x = self.quant_inp(x)
        x = self.quant2(torch.relu(self.fc1(x)))
        x = self.quant3(torch.relu(self.fc2(x)))
        x = self.fc3(x)
        return x


# -- page 001: QuantSimpleNet (Int8ActPerTensorFloat / Int8WeightPerTensorFloat) ------
N_BITS = 3
IN_FEAT = 2
OUT_FEAT = 2


class QuantSimpleNet(nn.Module):
    def __init__(
        self,
        n_hidden,
        qlinear_args={
            "weight_bit_width": N_BITS,
            "weight_quant": Int8WeightPerTensorFloat,
            "bias": True,
            "bias_quant": None,
            "narrow_range": True,
        },
        qidentity_args={"bit_width": N_BITS, "act_quant": Int8ActPerTensorFloat},
    ):
        super().__init__()

        self.quant_inp = qnn.QuantIdentity(**qidentity_args)
        self.fc1 = qnn.QuantLinear(IN_FEAT, n_hidden, **qlinear_args)
        self.relu1 = qnn.QuantReLU(bit_width=qidentity_args["bit_width"])
        self.fc2 = qnn.QuantLinear(n_hidden, n_hidden, **qlinear_args)
        self.relu2 = qnn.QuantReLU(bit_width=qidentity_args["bit_width"])
        self.fc3 = qnn.QuantLinear(n_hidden, OUT_FEAT, **qlinear_args)

        for m in self.modules():
            if isinstance(m, qnn.QuantLinear):
                torch.nn.init.uniform_(m.weight.data, -1, 1)

    def forward(self, x):
        x = self.quant_inp(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        x = self.fc3(x)
        return x


# -- page 002: CommonQuant injectors and QATPrunedSimpleNet ---------------------------
PRUNED_N_FEAT = 2  # page 002 uses N_FEAT = 2


class CommonQuant(ExtendedInjector):
    bit_width_impl_type = BitWidthImplType.CONST
    scaling_impl_type = ScalingImplType.CONST
    restrict_scaling_type = RestrictValueType.FP
    zero_point_impl = ZeroZeroPoint
    float_to_int_impl_type = FloatToIntImplType.ROUND
    scaling_per_output_channel = False
    narrow_range = True
    signed = True

    @value
    def quant_type(bit_width):
        if bit_width is None:
            return QuantType.FP
        elif bit_width == 1:
            return QuantType.BINARY
        else:
            return QuantType.INT


class CommonWeightQuant(CommonQuant, WeightQuantSolver):
    scaling_const = 1.0
    signed = True


class CommonActQuant(CommonQuant, ActQuantSolver):
    min_val = -1.0
    max_val = 1.0


class QATPrunedSimpleNet(nn.Module):
    def __init__(self, n_hidden):
        super(QATPrunedSimpleNet, self).__init__()

        n_bits = 3
        self.quant_inp = qnn.QuantIdentity(
            act_quant=CommonActQuant,
            bit_width=n_bits,
            return_quant_tensor=True,
        )

        self.fc1 = qnn.QuantLinear(
            PRUNED_N_FEAT,
            n_hidden,
            True,
            weight_quant=CommonWeightQuant,
            weight_bit_width=n_bits,
            bias_quant=None,
        )

        self.q1 = qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=n_bits, return_quant_tensor=True)

        self.fc2 = qnn.QuantLinear(
            n_hidden,
            n_hidden,
            True,
            weight_quant=CommonWeightQuant,
            weight_bit_width=3,
            bias_quant=None,
        )

        self.q2 = qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=n_bits, return_quant_tensor=True)

        self.fc3 = qnn.QuantLinear(
            n_hidden,
            2,
            True,
            weight_quant=CommonWeightQuant,
            weight_bit_width=n_hidden,
            bias_quant=None,
        )

        for m in self.modules():
            if isinstance(m, qnn.QuantLinear):
                torch.nn.init.uniform_(m.weight.data, -1, 1)

    def forward(self, x):
        x = self.quant_inp(x)
        x = self.q1(torch.relu(self.fc1(x)))
        x = self.q2(torch.relu(self.fc2(x)))
        x = self.fc3(x)
        return x

    def prune(self, max_non_zero, enable):
        # Linear layer weight has dimensions NumOutputs x NumInputs
        for name, layer in self.named_modules():
            if isinstance(layer, nn.Linear):
                num_zero_weights = (layer.weight.shape[1] - max_non_zero) * layer.weight.shape[0]
                if num_zero_weights <= 0:
                    continue

                if enable:
                    prune.l1_unstructured(layer, "weight", amount=num_zero_weights)
                else:
                    prune.remove(layer, "weight")


# -- small Brevitas networks of this file ----------------------------------------------
class TinyQATNet(nn.Module):
    """2 -> hidden -> 2 with 3-bit quantizers: one lookup per hidden neuron."""

    def __init__(self, n_hidden=6, bits=3, weight_quant=Int8WeightPerTensorFloat):
        super().__init__()
        self.quant_inp = qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)
        self.fc1 = qnn.QuantLinear(2, n_hidden, bias=True, weight_bit_width=bits, bias_quant=None,
                                   weight_quant=weight_quant)
        self.relu1 = qnn.QuantReLU(bit_width=bits, return_quant_tensor=True)
        self.fc2 = qnn.QuantLinear(n_hidden, 2, bias=True, weight_bit_width=bits, bias_quant=None,
                                   weight_quant=weight_quant)

    def forward(self, x):
        return self.fc2(self.relu1(self.fc1(self.quant_inp(x))))


class QuantConvNet(nn.Module):
    """QuantIdentity -> QuantConv2d -> QuantReLU -> AvgPool2d -> QuantIdentity -> Flatten -> QuantLinear."""

    def __init__(self, weight_quant=Int8WeightPerTensorFloat):
        super().__init__()
        self.quant_inp = qnn.QuantIdentity(bit_width=3)
        self.conv = qnn.QuantConv2d(1, 2, 3, weight_bit_width=3, bias_quant=None, weight_quant=weight_quant)
        self.relu = qnn.QuantReLU(bit_width=3)
        self.pool = nn.AvgPool2d(2)
        self.quant_pool = qnn.QuantIdentity(bit_width=3)
        self.flatten = nn.Flatten()
        self.fc = qnn.QuantLinear(2 * 2 * 2, 2, bias=True, weight_bit_width=3, bias_quant=None)

    def forward(self, x):
        x = self.relu(self.conv(self.quant_inp(x)))
        x = self.quant_pool(self.pool(x))
        return self.fc(self.flatten(x))


class NoEntryQuantNet(nn.Module):
    """QuantLinear first: the model input is not quantized."""

    def __init__(self):
        super().__init__()
        self.fc1 = qnn.QuantLinear(2, 4, bias=True, weight_bit_width=3, bias_quant=None)
        self.relu = qnn.QuantReLU(bit_width=3)
        self.fc2 = qnn.QuantLinear(4, 2, bias=True, weight_bit_width=3, bias_quant=None)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


class UnquantizedReluNet(nn.Module):
    """A float torch.relu between two QuantLinear, no quantizer before the second."""

    def __init__(self):
        super().__init__()
        self.quant_inp = qnn.QuantIdentity(bit_width=3)
        self.fc1 = qnn.QuantLinear(2, 4, bias=True, weight_bit_width=3, bias_quant=None)
        self.fc2 = qnn.QuantLinear(4, 2, bias=True, weight_bit_width=3, bias_quant=None)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.quant_inp(x))))


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def brevitas_output(model: nn.Module, x) -> np.ndarray:
    """The Brevitas model's own float output (eval mode), as float64 numpy."""
    model.eval()
    with torch.no_grad():
        y = model(torch.as_tensor(np.asarray(x), dtype=torch.float32))
    y = y.value if hasattr(y, "value") else y
    return y.detach().cpu().numpy().astype(np.float64)


def calibrate(model: nn.Module, x: torch.Tensor, passes: int = 3) -> nn.Module:
    """A few forward passes in train mode so Brevitas' statistics-based scales are set."""
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    model.eval()
    return model


def assert_fidelity(module, model, x, atol=FIDELITY_ATOL):
    expected = brevitas_output(model, x)
    got = module.forward(np.asarray(x, dtype=np.float32), fhe="disable")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    return got


def gemm_name_for(onnx_model: onnx.ModelProto, module_name: str) -> str:
    """The ONNX node name of the Gemm/MatMul/Conv that uses ``<module_name>.bias``."""
    for node in onnx_model.graph.node:
        if node.op_type in ("Gemm", "MatMul", "Conv") and f"{module_name}.bias" in node.input:
            return node.name
    raise AssertionError(f"no linear node uses {module_name}.bias")


def train(model, X, y, epochs, lr=0.01, batch_size=128, seed=0):
    """A fixed number of epochs, seeded shuffling: every run trains the same network.

    (Not a wall-clock budget: under load, a budget stops after fewer epochs and the
    fixtures would test a different network from run to run.)
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(X))
        for i in range(0, len(X), batch_size):
            idx = permutation[i : i + batch_size]
            optimizer.zero_grad()
            out = model(X[idx])
            out = out.value if hasattr(out, "value") else out
            torch.nn.functional.cross_entropy(out, y[idx]).backward()
            optimizer.step()
    model.eval()
    return model


def scale_checkerboard(X):
    """Centre the [0, 1]^2 board so a signed 3-bit input quantizer has levels to spare."""
    return ((np.asarray(X, dtype=np.float32) - 0.5) * 3.0).astype(np.float32)


# ---------------------------------------------------------------------------
# 1. The specification networks
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qat_simple_net():
    torch.manual_seed(0)
    model = QATSimpleNet(10)  # 30 on the page; fc3 then has 10-bit weights
    x = torch.randn(100, N_FEAT)
    calibrate(model, x)
    module = compile_brevitas_qat_model(model, x, n_bits=n_bits)
    return model, x, module


def test_qat_simple_net_page_000_fidelity(qat_simple_net):
    model, x, module = qat_simple_net
    assert module.fhe_circuit is not None
    x_test = torch.randn(50, N_FEAT, generator=torch.Generator().manual_seed(1))
    assert_fidelity(module, model, x)
    # the module reads each feature within its range in the inputset (its clip box, which
    # every accumulator is sized for): the Brevitas network given the rows so clipped agrees
    assert_fidelity(module, model, torch.clamp(x_test, x.min(dim=0).values, x.max(dim=0).values))
    np.testing.assert_array_equal(module.forward(x_test.numpy()),
                                  module.forward(torch.clamp(x_test, x.min(dim=0).values, x.max(dim=0).values).numpy()))


def test_qat_simple_net_n_bits_none_is_same_program(qat_simple_net):
    """n_bits only sets what the model does not quantize: the Brevitas settings win."""
    model, x, module = qat_simple_net
    default = compile_brevitas_qat_model(model, x)
    np.testing.assert_array_equal(default.forward(x.numpy()), module.forward(x.numpy()))
    assert_fidelity(default, model, x)


def test_qat_simple_net_page_000_n_hidden_30(tmp_path):
    """As written (n_hidden=30, so fc3 has 30-bit weights): works or names fc3 and the fix."""
    torch.manual_seed(0)
    model = QATSimpleNet(30)
    x = torch.randn(100, N_FEAT)
    calibrate(model, x)
    path = tmp_path / "qat_simple_net_30.onnx"
    try:
        module = compile_brevitas_qat_model(model, x, n_bits=n_bits, output_onnx_file=path)
    except ValueError as error:
        message = str(error)
        fc3_node = gemm_name_for(onnx.load(str(path)), "fc3")
        assert fc3_node in message or "fc3" in message, message
        assert "bit" in message, message
        assert any(hint in message for hint in ("lower", "prune", "rounding_threshold_bits")), message
    else:
        assert_fidelity(module, model, x)


@pytest.fixture(scope="module")
def quant_simple_net():
    torch.manual_seed(0)
    model = QuantSimpleNet(10)
    x = torch.rand(200, IN_FEAT) * 2 - 1
    calibrate(model, x)
    module = compile_brevitas_qat_model(model, x, rounding_threshold_bits=None)  # the exact import
    return model, x, module


def test_quant_simple_net_page_001_fidelity(quant_simple_net):
    model, x, module = quant_simple_net
    x_test = torch.rand(100, IN_FEAT, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert_fidelity(module, model, x)
    assert_fidelity(module, model, x_test)
    # the activations are the model's own 3-bit quantizers: one lookup per hidden neuron
    assert sum(step.n_elements for step in module.program.table_lookups) == 2 * 10


def test_default_rounding_keeps_the_decisions_with_narrower_lookups(quant_simple_net):
    from fheestimators.quantization.rounding import AUTO_TOLERANCE

    model, x, exact = quant_simple_net
    module = compile_brevitas_qat_model(model, x)  # default: rounding "auto", exact
    decided = brevitas_output(model, x).argmax(axis=1)
    assert np.mean(module.forward(x.numpy()).argmax(axis=1) == decided) >= 1 - AUTO_TOLERANCE
    rounded, whole = module.layer_reports(), exact.layer_reports()
    assert all(r.lookup_bits <= w.lookup_bits for r, w in zip(rounded, whole))
    assert sum(r.lookup_bits for r in rounded) < sum(w.lookup_bits for w in whole)
    assert {step.exactness for step in module.program.table_lookups if step.lsbs_to_remove} == {"exact"}
    np.testing.assert_array_equal(module.forward(x[:1].numpy(), fhe="execute"), module.forward(x[:1].numpy()))


def test_default_rounding_needs_enough_calibration_samples(quant_simple_net):
    model, x, _ = quant_simple_net
    with pytest.warns(UserWarning, match="at least 100 calibration samples"):
        module = build_quantized_module(model, x[:50], import_qat=True,
                                        rounding_threshold_bits={"n_bits": "auto", "method": "exact"})
    assert all(step.lsbs_to_remove == 0 for step in module.program.table_lookups)


MAX_NON_ZERO = 4


@pytest.fixture(scope="module")
def pruned_net():
    torch.manual_seed(0)
    n_hidden = 10  # 100 on the page; fc3 then has 10-bit weights
    model = QATPrunedSimpleNet(n_hidden)
    x = torch.rand(200, PRUNED_N_FEAT) * 2 - 1
    y = (x[:, 0] * x[:, 1] > 0).long()
    calibrate(model, x)
    model.prune(MAX_NON_ZERO, True)
    train(model, x, y, epochs=10, lr=0.01, batch_size=50)
    model.prune(MAX_NON_ZERO, False)
    module = compile_brevitas_qat_model(model, x)
    return model, x, module


def test_pruned_net_page_002_pruning_kept(pruned_net):
    model, _, _ = pruned_net
    for layer in (model.fc2, model.fc3):
        assert not hasattr(layer, "weight_orig")  # pruning was made permanent
        n_zero = int((layer.weight == 0).sum())
        assert n_zero >= (layer.weight.shape[1] - MAX_NON_ZERO) * layer.weight.shape[0]


def test_pruned_net_page_002_fidelity(pruned_net):
    model, x, module = pruned_net
    x_test = torch.rand(100, PRUNED_N_FEAT, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert_fidelity(module, model, x)
    assert_fidelity(module, model, x_test)
    # neurons that pruning cut off (nothing reads them, or nothing feeds them) cost no lookup
    matmuls = [step for step in module.program.steps if isinstance(step, MatMul)]
    assert len(matmuls) == 3
    w1, w2, w3 = (layer.quant_weight().value.detach().numpy() != 0 for layer in (model.fc1, model.fc2, model.fc3))
    live2 = w3.any(axis=0) & w2.any(axis=1)
    live1 = w2[live2].any(axis=0) & w1.any(axis=1)
    assert live1.sum() + live2.sum() < 2 * w2.shape[0]
    assert [step.n_elements for step in module.program.table_lookups] == [live1.sum(), live2.sum()]
    assert np.count_nonzero(matmuls[1].weight) == np.count_nonzero(w2[live2][:, live1])


def test_pruned_net_simulate_equals_disable(pruned_net):
    _, x, module = pruned_net
    np.testing.assert_array_equal(module.forward(x.numpy(), fhe="simulate"), module.forward(x.numpy()))


# ---------------------------------------------------------------------------
# 2. A QAT model trained on the checkerboard
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkerboard_model():
    X_train, X_test, y_train, y_test = make_checkerboard()
    X_train, X_test = scale_checkerboard(X_train), scale_checkerboard(X_test)
    torch.manual_seed(0)
    model = QuantSimpleNet(20)  # 2 -> 20 -> 20 -> 2, 3-bit weights and activations, QuantReLU
    train(model, X_train, y_train, epochs=10, lr=0.01, batch_size=128)
    module = compile_brevitas_qat_model(model, X_train[:1000])
    return model, module, X_test, y_test


def test_checkerboard_qat_fidelity(checkerboard_model):
    model, module, X_test, y_test = checkerboard_model
    assert len(X_test) == 500
    expected = brevitas_output(model, X_test).argmax(axis=1)
    disable = module.forward(X_test, fhe="disable")
    simulate = module.forward(X_test, fhe="simulate")
    np.testing.assert_array_equal(simulate, disable)
    agree_disable = np.mean(disable.argmax(axis=1) == expected)
    agree_simulate = np.mean(simulate.argmax(axis=1) == expected)
    accuracy_brevitas = np.mean(expected == y_test)
    accuracy_fhe = np.mean(simulate.argmax(axis=1) == y_test)
    print(
        f"\ncheckerboard QAT: brevitas accuracy {accuracy_brevitas:.3f}, simulate accuracy "
        f"{accuracy_fhe:.3f}, agreement disable {agree_disable:.4f} / simulate {agree_simulate:.4f}, "
        f"max bit-width {module.max_bit_width}"
    )
    assert agree_disable >= 0.995
    assert agree_simulate >= 0.995
    assert accuracy_brevitas > 0.5  # it learned something beyond chance


# ---------------------------------------------------------------------------
# 3. A trained tiny QAT network, encrypted
# ---------------------------------------------------------------------------
TINY_HIDDEN = 6


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    X_train, _, y_train, _ = make_checkerboard(n_side=40, test_size=100)
    X_train = scale_checkerboard(X_train)
    torch.manual_seed(0)
    model = TinyQATNet(TINY_HIDDEN)
    train(model, X_train, y_train, epochs=3, lr=0.02, batch_size=64)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    # without rounding: one 6-bit lookup per neuron, the Brevitas outputs exactly
    module = compile_brevitas_qat_model(model, X_train[:300], output_onnx_file=path, rounding_threshold_bits=None)
    return model, module, X_train, path


def test_tiny_qat_fidelity_and_lookups(tiny_module):
    model, module, X, _ = tiny_module
    assert_fidelity(module, model, X[:300])
    assert module.max_bit_width <= 6
    assert module.fhe_circuit.programmable_bootstrap_count == TINY_HIDDEN
    lookups = module.program.table_lookups
    assert sum(step.n_elements for step in lookups) == TINY_HIDDEN


def test_tiny_qat_execute_equals_disable(tiny_module):
    _, module, X, _ = tiny_module
    x = X[:2]
    encrypted = module.forward(x, fhe="execute")
    np.testing.assert_array_equal(encrypted, module.forward(x, fhe="disable"))


@pytest.fixture(scope="module")
def per_channel_module():
    """The tiny network with one weight scale per neuron (Brevitas' per-channel quantizer)."""
    X_train, _, y_train, _ = make_checkerboard(n_side=40, test_size=100)
    X_train = scale_checkerboard(X_train)
    torch.manual_seed(0)
    model = TinyQATNet(TINY_HIDDEN, weight_quant=Int8WeightPerChannelFloat)
    train(model, X_train, y_train, epochs=3, lr=0.02, batch_size=64)
    module = compile_brevitas_qat_model(model, X_train[:300], rounding_threshold_bits=None)
    return model, module, X_train


def test_per_channel_weights_keep_their_scales(per_channel_module):
    model, module, X = per_channel_module
    scales = model.fc1.quant_weight().scale.detach().numpy().reshape(-1)
    assert np.unique(scales).size > 1  # the case under test: neurons on different grids
    assert_fidelity(module, model, X[:300])
    first = next(step for step in module.program.steps if isinstance(step, MatMul))
    # the trained integers, not a re-quantization on one shared grid
    expected = np.rint(model.fc1.quant_weight().value.detach().numpy() / scales[:, None]).T
    np.testing.assert_array_equal(first.weight, expected)
    assert module.fhe_circuit.programmable_bootstrap_count == TINY_HIDDEN


def test_per_channel_weights_execute_equals_disable(per_channel_module):
    _, module, X = per_channel_module
    x = X[:2]
    np.testing.assert_array_equal(module.forward(x, fhe="execute"), module.forward(x, fhe="disable"))


def test_output_onnx_file_is_written(tiny_module):
    model, _, _, path = tiny_module
    assert path.exists()
    onnx_model = onnx.load(str(path))
    assert any(node.op_type == "Quant" for node in onnx_model.graph.node)
    assert gemm_name_for(onnx_model, "fc1")


# ---------------------------------------------------------------------------
# 4. Conv2d / AvgPool2d Brevitas model
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conv_model():
    torch.manual_seed(0)
    model = QuantConvNet()
    x = torch.randn(60, 1, 6, 6)
    calibrate(model, x)
    return model, x


def test_conv_brevitas_small_calibration_fidelity(conv_model):
    """Conv / pooling / flatten through the QONNX path, calibrated on two samples only."""
    model, x = conv_model
    module = compile_brevitas_qat_model(model, x[:2])
    assert_fidelity(module, model, x)
    np.testing.assert_array_equal(module.forward(x[:2].numpy(), fhe="simulate"),
                                  module.forward(x[:2].numpy(), fhe="disable"))
    assert [type(step).__name__ for step in module.program.steps].count("Conv") == 2  # conv + sum-pool


def test_conv_brevitas_compile(conv_model):
    model, x = conv_model
    module = compile_brevitas_qat_model(model, x)
    assert_fidelity(module, model, x)
    np.testing.assert_array_equal(module.forward(x.numpy(), fhe="simulate"), module.forward(x.numpy()))


def test_conv_brevitas_per_channel_weights_fidelity():
    torch.manual_seed(0)
    model = QuantConvNet(weight_quant=Int8WeightPerChannelFloat)
    x = torch.randn(60, 1, 6, 6)
    calibrate(model, x)
    assert np.unique(model.conv.quant_weight().scale.detach().numpy()).size == 2
    module = compile_brevitas_qat_model(model, x)
    assert_fidelity(module, model, x)


def test_conv_build_quantized_module_fidelity(conv_model):
    model, x = conv_model
    module = build_quantized_module(model, x, import_qat=True)
    assert_fidelity(module, model, x)


def test_build_quantized_module_brevitas_linear_fidelity(quant_simple_net):
    model, x, _ = quant_simple_net
    module = build_quantized_module(model, x, import_qat=True)
    assert_fidelity(module, model, x)


# ---------------------------------------------------------------------------
# 5. Generic QAT import: plain torch with weights on a grid and explicit fake-quant
# ---------------------------------------------------------------------------
S_IN, S_W, S_H = 0.5, 0.125, 0.125

# integer weight codes in [-2, 2]: a 3-bit post-training quantizer would re-scale them
# (scale 2/3 * S_W), the QAT import must keep them
W1_CODES = np.array([[1, -2], [2, 1], [-1, 2], [0, -1], [2, 2], [-2, 1]], dtype=np.float32)
W2_CODES = np.array([[1, -1, 2, 0, -2, 1], [-2, 1, 0, 2, 1, -1]], dtype=np.float32)


def fake_quant(x, scale, low, high):
    return torch.round(x / scale).clamp(low, high) * scale


class FakeQuantNet(nn.Module):
    """Generic QAT: grid weights, signed 3-bit input, unsigned 3-bit hidden activations."""

    def __init__(self, hidden_low=0, hidden_high=7):
        super().__init__()
        self.fc1 = nn.Linear(2, 6)
        self.fc2 = nn.Linear(6, 2)
        self.hidden_low, self.hidden_high = hidden_low, hidden_high
        with torch.no_grad():
            for fc, codes in ((self.fc1, W1_CODES), (self.fc2, W2_CODES)):
                fc.weight.data = torch.from_numpy(codes) * S_W
                # same as rounding trained weights onto the grid
                fc.weight.data = torch.round(fc.weight / S_W) * S_W
                fc.bias.data = torch.tensor([0.1, -0.2, 0.05, 0.3, -0.1, 0.2][: fc.out_features])

    def forward(self, x):
        x = fake_quant(x, S_IN, -4, 3)
        x = fake_quant(torch.relu(self.fc1(x)), S_H, self.hidden_low, self.hidden_high)
        return self.fc2(x)


def grid_inputs(n, seed):
    """Inputs on the model's input grid, both ends of the 3-bit range included."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(-4, 4, size=(n, 2))
    codes[0], codes[1] = (-4, -4), (3, 3)
    return torch.from_numpy((codes * S_IN).astype(np.float32))


def torch_output(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy().astype(np.float64)


def matmul_weights(module):
    return [step.weight for step in module.program.steps if isinstance(step, MatMul)]


def assert_kept_grid(int_weights, float_weights):
    """Integer weights times one scale give the grid weights back: nothing was re-quantized."""
    expected = float_weights.T.astype(np.float64)
    nonzero = int_weights != 0
    assert np.array_equal(nonzero, expected != 0)
    scale = float(np.median(expected[nonzero] / int_weights[nonzero]))
    np.testing.assert_allclose(int_weights * scale, expected, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def fake_quant_model():
    model = FakeQuantNet()
    x = grid_inputs(200, seed=0)
    hidden = torch.relu(model.fc1(fake_quant(x, S_IN, -4, 3))) / S_H
    assert float(hidden.min()) == 0 and float(hidden.max()) > 7  # the 3-bit hidden range is filled
    return model, x


@pytest.fixture(scope="module")
def generic_torch_module(fake_quant_model):
    model, x = fake_quant_model
    return compile_torch_model(model, x, import_qat=True, n_bits=3)


def test_generic_qat_torch_close_to_torch(fake_quant_model, generic_torch_module):
    model, x = fake_quant_model
    x_test = grid_inputs(100, seed=1)
    step = S_H * S_W  # one step of the output accumulator's grid
    for data in (x, x_test):
        diff = np.abs(generic_torch_module.forward(data.numpy(), fhe="disable") - torch_output(model, data))
        print(f"\ngeneric QAT import: max |disable - torch| = {diff.max():.2e} (output step {step})")
        assert diff.max() <= step, diff.max()


def test_generic_qat_torch_weights_not_requantized(fake_quant_model, generic_torch_module):
    model, x = fake_quant_model
    weights = matmul_weights(generic_torch_module)
    assert len(weights) == 2
    assert_kept_grid(weights[0], model.fc1.weight.detach().numpy())
    assert_kept_grid(weights[1], model.fc2.weight.detach().numpy())
    # the check can fail: a 3-bit post-training quantization does change these weights
    ptq = matmul_weights(build_quantized_module(model, x, import_qat=False, n_bits=3))
    with pytest.raises(AssertionError):
        assert_kept_grid(ptq[0], model.fc1.weight.detach().numpy())


def test_generic_qat_simulate_equals_disable(fake_quant_model, generic_torch_module):
    _, x = fake_quant_model
    np.testing.assert_array_equal(generic_torch_module.forward(x.numpy(), fhe="simulate"),
                                  generic_torch_module.forward(x.numpy(), fhe="disable"))


def test_generic_qat_onnx(fake_quant_model, generic_torch_module):
    model, x = fake_quant_model
    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, dynamo=False, opset_version=14)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    module = compile_onnx_model(onnx_model, x, import_qat=True, n_bits=3)
    out = module.forward(x.numpy(), fhe="disable")
    assert np.abs(out - torch_output(model, x)).max() <= S_H * S_W
    np.testing.assert_allclose(out, generic_torch_module.forward(x.numpy()), rtol=0, atol=1e-9)
    weights = matmul_weights(module)
    assert_kept_grid(weights[0], model.fc1.weight.detach().numpy())
    assert_kept_grid(weights[1], model.fc2.weight.detach().numpy())


@pytest.mark.xfail(
    reason="BUG: generic import_qat keeps weight grids (_grid_scale) but not activation grids: "
    "Builder.materialize re-quantizes each fake-quantized activation with "
    "UniformQuantizer.unsigned(calibration min..max, n_bits), so a grid that does not span "
    "exactly 2**n_bits levels on the calibration set (here relu then round().clamp(-4, 3): 4 "
    "levels 0..3*s, re-quantized with step 3*s/7) is moved off the model's grid",
    strict=True,
)
def test_generic_qat_relu_then_signed_fake_quant_keeps_grid():
    model = FakeQuantNet(hidden_low=-4, hidden_high=3)
    x = grid_inputs(200, seed=0)
    module = build_quantized_module(model, x, import_qat=True, n_bits=3)
    # the same model with a grid that fills the 3-bit range is reproduced exactly
    # (test_generic_qat_torch_close_to_torch); keeping this grid should be exact too
    diff = np.abs(module.forward(x.numpy(), fhe="disable") - torch_output(model, x))
    assert diff.max() <= 1e-6, diff.max()


# ---------------------------------------------------------------------------
# 6. Errors and has_any_qnn_layers
# ---------------------------------------------------------------------------
def test_error_no_quant_identity_at_entry():
    torch.manual_seed(0)
    model = NoEntryQuantNet()
    x = torch.randn(50, 2)
    calibrate(model, x, passes=1)
    with pytest.raises(ValueError, match="QuantIdentity"):
        compile_brevitas_qat_model(model, x)


def test_error_unquantized_relu_between_linear_layers(tmp_path):
    torch.manual_seed(0)
    model = UnquantizedReluNet()
    x = torch.randn(50, 2)
    calibrate(model, x, passes=1)
    path = tmp_path / "unquantized_relu.onnx"
    with pytest.raises(ValueError) as info:
        compile_brevitas_qat_model(model, x, output_onnx_file=path)
    message = str(info.value)
    fc2_node = gemm_name_for(onnx.load(str(path)), "fc2")
    assert fc2_node in message or "fc2" in message, message
    assert "QuantIdentity" in message or "QuantReLU" in message, message
    assert "Relu" in message, message


def test_error_plain_torch_model():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="brevitas"):
        compile_brevitas_qat_model(model, torch.randn(10, 2))


def test_error_not_a_module():
    with pytest.raises(TypeError):
        compile_brevitas_qat_model(lambda x: x, torch.randn(10, 2))


def test_has_any_qnn_layers():
    assert has_any_qnn_layers(QATSimpleNet(4))
    assert has_any_qnn_layers(QuantSimpleNet(4))
    assert has_any_qnn_layers(QATPrunedSimpleNet(4))
    assert has_any_qnn_layers(nn.Sequential(nn.Linear(2, 2), nn.Sequential(qnn.QuantReLU(bit_width=3))))
    assert not has_any_qnn_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert not has_any_qnn_layers(FakeQuantNet())


def test_weights_wider_than_fhe_integers_name_the_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        qnn.QuantIdentity(bit_width=3, return_quant_tensor=True),
        qnn.QuantLinear(2, 4, bias=True, weight_bit_width=3, bias_quant=None),
        torch.nn.ReLU(),
        qnn.QuantIdentity(bit_width=3, return_quant_tensor=True),
        qnn.QuantLinear(4, 2, bias=True, weight_bit_width=60, bias_quant=None),
    )
    x = torch.randn(50, 2)
    with pytest.raises(ValueError, match=r"weights of layer '[^']*' are integers of \d+ bits.*weight bit-width"):
        compile_brevitas_qat_model(model, x)
