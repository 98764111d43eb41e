"""The network behind the estimators: a fully connected Brevitas QAT MLP."""
from __future__ import annotations

from numbers import Integral
from typing import Sequence, Type, Union

import brevitas.nn as qnn
from brevitas.core.scaling import ScalingImplType
from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat
import torch
from torch import nn

__all__ = ["QATMLP", "layer_widths"]

# Activations whose outputs are never negative: an unsigned quantizer doubles their resolution.
NON_NEGATIVE = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)

# The first hidden layer draws the decision boundaries, the later ones combine them: it
# gets more neurons (docs/design-notes.md, "Estimator defaults", has the measurements)
FIRST_HIDDEN_WIDTH = 24
HIDDEN_WIDTH = 16


def layer_widths(n_inputs: int, n_outputs: int, n_layers: int,
                 n_hidden: Union[int, Sequence[int], None]) -> list[int]:
    """Widths from input to output: ``n_hidden`` for every hidden layer, or one width each.

    None gives ``FIRST_HIDDEN_WIDTH`` neurons to the first hidden layer and
    ``HIDDEN_WIDTH`` to each of the others, whatever the number of layers.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    if n_hidden is None:
        hidden = [FIRST_HIDDEN_WIDTH] + [HIDDEN_WIDTH] * (n_layers - 2) if n_layers > 1 else []
    elif isinstance(n_hidden, Integral):
        hidden = [int(n_hidden)] * (n_layers - 1)
    else:
        hidden = [int(width) for width in n_hidden]
        if len(hidden) != n_layers - 1:
            raise ValueError(
                f"n_hidden gives {len(hidden)} hidden widths for n_layers={n_layers} "
                f"(which has {n_layers - 1} hidden layers)"
            )
    return [n_inputs, *hidden, n_outputs]


class QATMLP(nn.Module):
    """Quantized MLP: ``QuantIdentity → (QuantLinear → activation → QuantIdentity) × … → QuantLinear``.

    Every linear layer sees integers of ``n_a_bits`` bits and has ``n_w_bits``-bit
    weights; biases stay float (they fold into the table lookups). The output layer is
    not re-quantized: its accumulator is dequantized in the clear.

    Parameters
    ----------
    n_inputs, n_outputs : int
        Set by the estimator from the data.
    n_layers : int
        Number of linear layers (hidden layers + 1).
    n_hidden : int, sequence of int or None
        Width of each hidden layer, or one width per hidden layer (then
        ``len(n_hidden)`` must be ``n_layers - 1``). None (the default): 24 neurons
        in the first hidden layer, which places the decision boundaries, and 16 in
        each later one; on the checkerboard data that is 0.15 point more accurate
        than 16 everywhere for 20% more FHE work.
    activation : type of torch.nn.Module
        Any supported torch activation (Tanh, ReLU, Sigmoid, SiLU, ...). Tanh rather
        than ReLU: a ReLU's table is flat below its kink, so rounding its accumulator
        spends about half the bins on one output value; Tanh's table varies on both
        sides. On the checkerboard data, with 6-bit rounding (the default then), Tanh is about
        1 point more accurate (94.3% against 93.4% on 50,000 fresh points, mean over
        6 seeds) at the same number of bootstraps.
    n_w_bits, n_a_bits : int
        Bits of weights and activations. More bits cost nothing in FHE here: the
        accumulators are rounded to 8 bits (the estimators' default) before each
        lookup either way. On the checkerboard data 6-bit weights gain about 1.5% over
        4; 8-bit activations gain 0.11 point over 6 in Brevitas and, with the rounding's
        fractional gains, 0.07 point simulated on fresh points (8 seeds, 7 better).
    n_input_bits : int
        Bits of the quantized input features. Cheap (the first layer sums few products,
        and its accumulator is rounded before the lookup) and it sets how finely the
        network can place a decision boundary: 8 bits rather than 6 gains about 1% on
        the checkerboard data.
    n_output_w_bits : int or None
        Bits of the output layer's weights (None: ``n_w_bits``). The output is decrypted
        exactly, so the noise its weights gather from the last lookups must stay below
        one unit: large output weights force concrete-python to larger keys for every
        lookup. 3 bits rather than 6 cut the checkerboard circuit's cost by 30%
        (0.56 s per encrypted sample instead of 0.83 s) at an accuracy within the
        spread of training seeds.
    max_non_zero : int or None
        Most non-zero weights per neuron, enforced by pruning during training.
    n_accum_bits : int or None
        Target accumulator bit-width; derives ``max_non_zero`` when that is None.
    input_scale : float or None
        A fixed scale of the input quantizer instead of one learnt from the data: the
        estimators' learned bins give integer inputs (bin indices), which a scale of 1
        keeps exact and distinct however training goes.
    linear_term : bool
        Add ``linear_term_layer(quantized inputs)`` to the output: a linear model that
        the MLP adds to. Its weights (no bias) are not trained by gradient: they start
        at zero and ``NeuralNetRegressor`` sets them by ridge regression on its training
        rows. In FHE the sum keeps the wider of the two accumulators exact (the term's,
        on the benchmarks' data) and looks the other up on its scale: one lookup per output.
    linear_term_w_bits : int
        Bits of the linear term's weights. 8 rather than 6: they are a whole linear
        model, and its accumulator reaches the output exact, so the two bits only widen
        the decrypted sum (on diabetes 6 bits lost 0.005 of R²).
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        n_layers: int = 3,
        n_hidden: Union[int, Sequence[int], None] = None,
        activation: Type[nn.Module] = nn.Tanh,
        n_w_bits: int = 6,
        n_a_bits: int = 8,
        n_input_bits: int = 8,
        n_output_w_bits: int | None = 3,
        max_non_zero: int | None = None,
        n_accum_bits: int | None = None,
        input_scale: float | None = None,
        linear_term: bool = False,
        linear_term_w_bits: int = 8,
    ):
        super().__init__()
        if max_non_zero is None and n_accum_bits is not None:
            from .pruning import max_non_zero_for

            max_non_zero = max_non_zero_for(n_accum_bits, n_w_bits, n_a_bits)
        self.max_non_zero = max_non_zero
        widths = layer_widths(n_inputs, n_outputs, n_layers, n_hidden)
        fixed = {} if input_scale is None else {  # brevitas' threshold: the scale times 2^(bits - 1)
            "scaling_impl_type": ScalingImplType.CONST, "scaling_init": float(input_scale) * 2 ** (n_input_bits - 1)}
        # plain tensors between layers: the same values as Brevitas' QuantTensors, without the
        # wrapping and dispatch they cost on every call (8% of a training step, design notes)
        layers: list[nn.Module] = [qnn.QuantIdentity(bit_width=n_input_bits, **fixed)]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            bits = n_output_w_bits if last and n_output_w_bits is not None else n_w_bits
            layers.append(qnn.QuantLinear(fan_in, fan_out, bias=True, weight_bit_width=bits, bias_quant=None))
            if not last:
                layers.append(activation())
                quant = Uint8ActPerTensorFloat if issubclass(activation, NON_NEGATIVE) else Int8ActPerTensorFloat
                layers.append(qnn.QuantIdentity(act_quant=quant, bit_width=n_a_bits))
        self.layers = nn.Sequential(*layers)
        self.linear_term_layer = None
        if linear_term:
            self.linear_term_layer = qnn.QuantLinear(n_inputs, n_outputs, bias=False,
                                                     weight_bit_width=linear_term_w_bits, bias_quant=None)
            with torch.no_grad():
                self.linear_term_layer.weight.zero_()
            # fitted in closed form by the estimator: gradient steps would only add noise to it
            self.linear_term_layer.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear_term_layer is None:
            return self.layers(x)
        inputs = self.layers[0](x)
        return self.layers[1:](inputs) + self.linear_term_layer(inputs)

    @property
    def linear_layers(self) -> list[qnn.QuantLinear]:
        return [m for m in self.layers if isinstance(m, qnn.QuantLinear)]
