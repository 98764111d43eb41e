"""The exporters: our message for a wrong inputset, torch's tracer warnings kept, the rest quiet."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fheestimators.onnx.export import EXPORTER_KEY, torch_to_onnx


def _exporter(model) -> str:
    return {p.key: p.value for p in model.metadata_props}[EXPORTER_KEY]


def test_an_inputset_of_the_wrong_width_gets_one_clear_message(capfd):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"does not run on inputs shaped like the inputset \(\(2, 5\)\)"):
        torch_to_onnx(model, [torch.randn(2, 5)])
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 500  # torch's internal tracebacks stay out


class _Branchy(nn.Module):
    """Data-dependent control flow: the traced graph keeps one branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_tracer_warnings_stay_visible():
    with pytest.warns(torch.jit.TracerWarning):
        model = torch_to_onnx(_Branchy(), [torch.ones(2, 3)])
    assert _exporter(model) == "torchscript"


def test_the_dynamo_fallback_is_quiet_and_recorded(capfd):
    # the TorchScript exporter refuses a Threshold with a non-zero threshold
    model = nn.Sequential(nn.Linear(2, 3), nn.Threshold(0.5, -1.0))
    exported = torch_to_onnx(model, [torch.randn(2, 2)])
    assert _exporter(exported).startswith("dynamo")
    out, err = capfd.readouterr()
    assert "[torch.onnx]" not in out and "torchvision" not in err
    torch_to_onnx(model, [torch.randn(2, 2)], verbose=True)
    assert "[torch.onnx]" in capfd.readouterr().out
