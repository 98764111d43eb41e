"""torch / Brevitas models to ONNX."""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import onnx
import torch

OPSET_VERSION_FOR_ONNX_EXPORT = 14


def torch_to_onnx(model: torch.nn.Module, dummy_inputs: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """Export a plain torch model with a dynamic batch axis.

    The TorchScript exporter is tried first: it is fast and writes a plain opset-14 graph.
    The dynamo exporter (opset 18) takes over for what the first refuses (e.g. a
    ``Threshold`` with a non-zero threshold).
    """
    names = [f"input_{i}" for i in range(len(dummy_inputs))]
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                buffer = io.BytesIO()
                torch.onnx.export(
                    model,
                    tuple(dummy_inputs),
                    buffer,
                    dynamo=False,
                    opset_version=OPSET_VERSION_FOR_ONNX_EXPORT,
                    input_names=names,
                    dynamic_axes={name: {0: "batch"} for name in names},
                    do_constant_folding=True,
                )
                return onnx.load_from_string(buffer.getvalue())
            except Exception as first_error:  # the legacy exporter misses some ops
                try:
                    program = torch.onnx.export(
                        model,
                        tuple(dummy_inputs),
                        dynamo=True,
                        input_names=names,
                        dynamic_shapes=[{0: torch.export.Dim("batch")} for _ in names],
                        verbose=False,
                    )
                except Exception as second_error:
                    raise ValueError(
                        f"torch could not export the model to ONNX: {first_error}"
                    ) from second_error
                return program.model_proto
    finally:
        model.train(was_training)


def brevitas_to_onnx(model: torch.nn.Module, dummy_inputs: Sequence[torch.Tensor],
                     output_onnx_file=None) -> onnx.ModelProto:
    """Export a Brevitas model to QONNX: its quantizers become ``Quant`` nodes."""
    import tempfile
    from pathlib import Path

    from brevitas.export import export_qonnx

    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(output_onnx_file) if output_onnx_file is not None else Path(tmp) / "model.onnx"
            names = [f"input_{i}" for i in range(len(dummy_inputs))]
            with torch.no_grad():
                # the TorchScript exporter keeps the batch axis free and names nodes after modules
                export_qonnx(model, tuple(dummy_inputs) if len(dummy_inputs) > 1 else dummy_inputs[0],
                             export_path=str(path), opset_version=OPSET_VERSION_FOR_ONNX_EXPORT,
                             dynamo=False, input_names=names,
                             dynamic_axes={name: {0: "batch"} for name in names})
            return onnx.load(str(path))
    finally:
        model.train(was_training)
