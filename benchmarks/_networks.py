"""The specification's checkerboard networks (pages 001 and 002) and how they are trained.

Networks:

* ``SimpleNet``: the float MLP 2 -> n -> n -> 2 quantized after training (PTQ).
* ``PrunedSimpleNet``: the same, with per-layer L1 pruning (``PrunedQuantNet`` /
  ``PrunedSimpleNet`` of the pages; their ``prune`` methods are rewritten here because
  page 002's iterates over ``(name, module)`` pairs and never prunes anything).
* ``QATPrunedSimpleNet``: page 002's Brevitas network with the ``CommonQuant`` injectors.
  The page gives its output layer ``weight_bit_width=n_hidden`` (100-bit weights for
  100 neurons), which no FHE accumulator can hold; ``output_bit_width`` defaults to the
  network's 3 bits and ``output_bit_width=None`` builds the page's version.
* ``QuantSimpleNet``: page 001's Brevitas network (``Int8ActPerTensorFloat`` /
  ``Int8WeightPerTensorFloat``, ``QuantReLU``).

Training: neither page gives epochs, learning rate nor optimizer; we use Adam with
cross-entropy. Pruning follows the pages' ``prune(max_non_zero, enable)`` protocol:
masks on before training, folded into the weights after it.
"""
from __future__ import annotations

from typing import Optional

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.core.bit_width import BitWidthImplType
from brevitas.core.quant import QuantType
from brevitas.core.restrict_val import FloatToIntImplType, RestrictValueType
from brevitas.core.scaling import ScalingImplType
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject import ExtendedInjector
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat
from brevitas.quant.solver import ActQuantSolver, WeightQuantSolver
from dependencies import value
from torch import nn
from torch.nn.utils import prune

N_FEATURES = 2
N_CLASSES = 2
N_BITS = 3


# -- float network (pages 001/002) ---------------------------------------------------------
class SimpleNet(nn.Module):
    """Two hidden ReLU layers of ``n_hidden`` neurons; trained in float."""

    def __init__(self, n_hidden: int = 30):
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_hidden)
        self.fc3 = nn.Linear(n_hidden, N_CLASSES)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def prune_linear_layers(model: nn.Module, max_non_zero: int) -> list[str]:
    """Zero the smallest weights of each linear layer: ``max_non_zero`` inputs per neuron on average.

    As on the pages: ``(in_features - max_non_zero) * out_features`` weights of the whole
    layer are removed (L1, unstructured); layers with at most ``max_non_zero`` inputs are
    left alone. Returns the names of the pruned layers.
    """
    pruned = []
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear):  # brevitas' QuantLinear is an nn.Linear too
            continue
        n_zero = (layer.in_features - max_non_zero) * layer.out_features
        if n_zero > 0:
            prune.l1_unstructured(layer, "weight", amount=n_zero)
            pruned.append(name)
    return pruned


def make_pruning_permanent(model: nn.Module) -> None:
    """Fold the pruning masks into the weights (the zeros stay, the hooks go)."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and prune.is_pruned(layer):
            prune.remove(layer, "weight")


class Prunable:
    """The pages' ``prune(max_non_zero, enable)``: masks on with True, folded in with False."""

    def prune(self, max_non_zero: int, enable: bool = True) -> None:
        if enable:
            prune_linear_layers(self, max_non_zero)
        else:
            make_pruning_permanent(self)


class PrunedSimpleNet(Prunable, SimpleNet):
    """``SimpleNet`` whose linear layers can be pruned to ``max_non_zero`` inputs per neuron."""


# -- page 002: QAT with the CommonQuant injectors --------------------------------------------
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
        if bit_width == 1:
            return QuantType.BINARY
        return QuantType.INT


class CommonWeightQuant(CommonQuant, WeightQuantSolver):
    scaling_const = 1.0
    signed = True


class CommonActQuant(CommonQuant, ActQuantSolver):
    min_val = -1.0
    max_val = 1.0


def _uniform_init(model: nn.Module) -> None:
    for layer in model.modules():
        if isinstance(layer, qnn.QuantLinear):
            nn.init.uniform_(layer.weight.data, -1, 1)


class QATPrunedSimpleNet(Prunable, nn.Module):
    """Page 002: 3-bit QuantIdentity before every QuantLinear, torch.relu between them.

    Parameters
    ----------
    n_hidden : int
    output_bit_width : int or None
        Weight bits of the output layer; None reproduces the page (``n_hidden`` bits).
    """

    def __init__(self, n_hidden: int, output_bit_width: Optional[int] = N_BITS):
        super().__init__()
        linear = dict(bias=True, weight_quant=CommonWeightQuant, bias_quant=None)
        act = dict(act_quant=CommonActQuant, bit_width=N_BITS, return_quant_tensor=True)
        self.quant_inp = qnn.QuantIdentity(**act)
        self.fc1 = qnn.QuantLinear(N_FEATURES, n_hidden, weight_bit_width=N_BITS, **linear)
        self.q1 = qnn.QuantIdentity(**act)
        self.fc2 = qnn.QuantLinear(n_hidden, n_hidden, weight_bit_width=N_BITS, **linear)
        self.q2 = qnn.QuantIdentity(**act)
        out_bits = n_hidden if output_bit_width is None else output_bit_width
        self.fc3 = qnn.QuantLinear(n_hidden, N_CLASSES, weight_bit_width=out_bits, **linear)
        _uniform_init(self)

    def forward(self, x):
        x = self.quant_inp(x)
        x = self.q1(torch.relu(self.fc1(x)))
        x = self.q2(torch.relu(self.fc2(x)))
        return self.fc3(x)


# -- page 001: QuantSimpleNet ------------------------------------------------------------------
class QuantSimpleNet(Prunable, nn.Module):
    """Page 001: per-tensor float-scaled 3-bit quantizers, QuantReLU activations."""

    def __init__(self, n_hidden: int, n_bits: int = N_BITS):
        super().__init__()
        linear = dict(weight_bit_width=n_bits, weight_quant=Int8WeightPerTensorFloat, bias=True,
                      bias_quant=None, narrow_range=True)
        self.quant_inp = qnn.QuantIdentity(bit_width=n_bits, act_quant=Int8ActPerTensorFloat)
        self.fc1 = qnn.QuantLinear(N_FEATURES, n_hidden, **linear)
        self.relu1 = qnn.QuantReLU(bit_width=n_bits)
        self.fc2 = qnn.QuantLinear(n_hidden, n_hidden, **linear)
        self.relu2 = qnn.QuantReLU(bit_width=n_bits)
        self.fc3 = qnn.QuantLinear(n_hidden, N_CLASSES, **linear)
        _uniform_init(self)

    def forward(self, x):
        x = self.quant_inp(x)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


# -- training and evaluation -------------------------------------------------------------------
def logits(model: nn.Module, X) -> np.ndarray:
    """The model's float output in eval mode (a Brevitas QuantTensor is unwrapped)."""
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(X), dtype=torch.float32))
    out = out.value if hasattr(out, "value") else out
    return out.detach().cpu().numpy().astype(np.float64)


def train(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    max_non_zero: Optional[int] = None,
    seed: int = 0,
) -> nn.Module:
    """Adam + cross-entropy on shuffled mini-batches, optionally pruned throughout.

    With ``max_non_zero``, the L1 pruning masks are put on the initial weights (as the
    pages do: ``prune(max_non_zero, True)``, train, ``prune(max_non_zero, False)``), the
    kept weights are trained and the masks are folded into the weights at the end.
    """
    generator = torch.Generator().manual_seed(seed)
    X_t = torch.as_tensor(X, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.long)
    if max_non_zero is not None:
        prune_linear_layers(model, max_non_zero)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X_t), generator=generator)
        for start in range(0, len(X_t), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            out = model(X_t[idx])
            out = out.value if hasattr(out, "value") else out
            nn.functional.cross_entropy(out, y_t[idx]).backward()
            optimizer.step()
    if max_non_zero is not None:
        make_pruning_permanent(model)
    model.eval()
    return model


def non_zero_per_neuron(model: nn.Module) -> dict[str, float]:
    """Mean number of non-zero input weights per neuron, for each linear layer."""
    return {name: float((layer.weight != 0).sum(dim=1).float().mean())
            for name, layer in model.named_modules() if isinstance(layer, nn.Linear)}
