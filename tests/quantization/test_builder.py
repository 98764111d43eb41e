"""The builder's reading of QAT weight grids."""
from __future__ import annotations

import numpy as np

from fheestimators.quantization.builder import _channel_scale


def test_channel_scale_takes_one_scale_per_output_channel():
    weights = np.zeros((3, 4))  # (inputs, outputs): the output channels are the columns
    per_output = np.array([[0.1, 0.2, 0.3, 0.4]])
    assert _channel_scale(per_output, weights, channel_axis=-1) is per_output
    # a scale per input would give one sum's products different scales: refused
    assert _channel_scale(np.array([[0.1], [0.2], [0.3]]), weights, channel_axis=-1) is None
    assert _channel_scale(np.full((3, 4), 0.1), weights, channel_axis=-1) is None
    assert _channel_scale(np.array([0.1, 0.2, 0.3, 0.4]), weights, channel_axis=-1) is None  # no axes to match
