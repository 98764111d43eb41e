"""Neurons that pruning cut off cost no bootstrap, and the results do not change."""
import numpy as np
import torch

from fheestimators.torch.compile import build_quantized_module, compile_torch_model


def _mlp(seed=0, hidden=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 2),
    )


def _lookups(module) -> int:
    return sum(step.n_elements for step in module.program.table_lookups)


def _without_the_pass(monkeypatch):
    """Builds after this call skip the dead-lookup pass (the reference it must equal)."""
    monkeypatch.setattr("fheestimators.torch.compile.remove_dead_lookups", lambda program: 0)


def test_unread_and_unfed_neurons_are_dropped_without_changing_outputs(monkeypatch):
    x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    reference = build_quantized_module(_mlp(), x, n_bits=5)
    model = _mlp()
    with torch.no_grad():
        model[4].weight[:, 1] = 0     # hidden-2 neuron 1 is read by no output
        model[2].weight[3, :] = 0     # hidden-2 neuron 3 has no input: a constant
        model[2].weight[:, 5] = 0     # hidden-1 neuron 5 is read by nobody
    pruned = build_quantized_module(model, x, n_bits=5)
    assert _lookups(reference) == 16
    assert _lookups(pruned) == 16 - 3

    # the same network without the pass gives the same integers
    _without_the_pass(monkeypatch)
    unpruned = build_quantized_module(model, x, n_bits=5)
    assert _lookups(unpruned) == 16
    np.testing.assert_array_equal(pruned.forward(x), unpruned.forward(x))


def test_dead_neurons_are_skipped_in_fhe_too():
    x = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    model = _mlp(hidden=4)
    with torch.no_grad():
        model[4].weight[:, 0] = 0
        model[2].weight[2, :] = 0
    module = compile_torch_model(model, x, n_bits=3)
    assert module.fhe_circuit.programmable_bootstrap_count == 8 - 2
    np.testing.assert_array_equal(module.forward(x[:2], fhe="execute"), module.forward(x[:2]))
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))


def test_chained_lookups_shrink_together(monkeypatch, untabulated):
    """A quantizer before the activation makes two lookups per neuron: both lose the dead ones."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    from fheestimators.quantization.steps import Index
    from fheestimators.torch.compile import compile_brevitas_qat_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantLinear(2, 6, bias=True, weight_bit_width=3, bias_quant=None),
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=5),
        torch.nn.ReLU(),
        qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=3, return_quant_tensor=True),
        qnn.QuantLinear(6, 2, bias=True, weight_bit_width=3, bias_quant=None),
    )
    x = torch.randn(200, 2)
    model(x)
    with torch.no_grad():
        model[5].weight[:, [1, 4]] = 0  # hidden neurons 1 and 4 are read by no output
    model.eval()
    module = compile_brevitas_qat_model(model, x, rounding_threshold_bits=None)
    lookups = module.program.table_lookups
    assert len(lookups) == 2 and all(step.n_elements == 4 for step in lookups)
    assert not any(isinstance(step, Index) for step in module.program.steps)
    assert module.fhe_circuit.programmable_bootstrap_count == 4
    _without_the_pass(monkeypatch)
    whole = build_quantized_module(model, x, import_qat=True)
    assert sum(step.n_elements for step in whole.program.table_lookups) == 12
    np.testing.assert_array_equal(module.forward(x.numpy()), whole.forward(x.numpy()))
    np.testing.assert_array_equal(module.forward(x[:1].numpy(), fhe="execute"), module.forward(x[:1].numpy()))


class _StridedCNN(torch.nn.Module):
    """conv 1x6x6 -> 2x4x4, ReLU, conv 3x3 stride 2 -> 2x1x1: the second conv reads rows and columns 0-2 only."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 2, 3)
        self.conv2 = torch.nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))).flatten(1)


def test_elements_no_convolution_reads_cost_no_bootstrap(monkeypatch):
    torch.manual_seed(0)
    model = _StridedCNN().eval()
    with torch.no_grad():  # weights of one magnitude: none rounds to 0 at 2 bits
        model.conv2.weight.copy_(torch.sign(model.conv2.weight) * 0.3)
    x = torch.randn(100, 1, 6, 6).numpy()
    # 2-bit activations and weights: 4-bit lookups, fast keys
    bits = {"op_inputs": 2, "op_weights": 2}
    module = compile_torch_model(model, x, n_bits=bits)
    assert _lookups(module) == 2 * 3 * 3  # of 2 * 4 * 4
    assert module.fhe_circuit.programmable_bootstrap_count == 18
    _without_the_pass(monkeypatch)
    whole = build_quantized_module(model, x, n_bits=bits)
    assert _lookups(whole) == 32
    np.testing.assert_array_equal(module.forward(x), whole.forward(x))
    np.testing.assert_array_equal(module.forward(x, fhe="simulate"), module.forward(x))
    np.testing.assert_array_equal(module.forward(x[:1], fhe="execute"), module.forward(x[:1]))


def test_conv_reads_matches_one_element_at_a_time():
    """The receptive fields, with padding, stride, dilation and groups: each element changes some
    output exactly when ``conv_reads`` says it is read."""
    from fheestimators.quantization.dead_lookups import conv_reads
    from fheestimators.quantization.steps import Conv

    rng = np.random.default_rng(0)
    weight = rng.integers(-3, 4, size=(4, 2, 3, 2))
    weight[1, :, 0, :] = 0  # a zero row of one kernel reads nothing there
    conv = Conv("c", ["x"], "y", weight=weight, pads=(1, 0, 0, 2), strides=(3, 2), dilations=(1, 2), group=2)
    shape = (4, 7, 6)
    size = int(np.prod(shape))
    hot = np.eye(size, dtype=np.int64).reshape((size, *shape))
    brute = np.any(Conv("c", ["x"], "y", weight=np.abs(weight), pads=conv.pads, strides=conv.strides,
                        dilations=conv.dilations, group=2).numpy(hot).reshape(size, -1) != 0, axis=1)
    reads = conv_reads(conv, shape)
    np.testing.assert_array_equal(reads.ravel(), brute)
    assert 0 < reads.sum() < size


def test_a_layer_saturated_over_the_whole_box_is_a_constant_and_compiles_rounded():
    # every first-layer neuron saturates on any input the module accepts: its table is one
    # negative number, which concrete-python 2.11 fails to compile once rounded (an MLIR parse error)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 2))
    with torch.no_grad():
        net[0].bias[:] = -50.0
    x = np.random.default_rng(0).uniform(-1, 1, (200, 4)).astype(np.float32)
    module = compile_torch_model(net, x, n_bits=6, rounding_threshold_bits=4, p_error=1e-9)
    saturated, live = module.program.table_lookups
    assert saturated.constant is not None and np.all(saturated.constant < 0)
    assert live.constant is None
    assert module.fhe_circuit.programmable_bootstrap_count == live.n_elements
    clear = module.forward(x[:3])
    np.testing.assert_array_equal(module.forward(x[:3], fhe="simulate"), clear)
    np.testing.assert_array_equal(module.forward(x[:3], fhe="execute"), clear)
    # the network is constant (its first layer is): so is the module, near torch's value
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(module.forward(x), expected, atol=0.05)
