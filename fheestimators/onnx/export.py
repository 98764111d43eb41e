"""torch / Brevitas models to ONNX."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator, Sequence

import onnx
import torch

OPSET_VERSION_FOR_ONNX_EXPORT = 14


def torch_to_onnx(model: torch.nn.Module, dummy_inputs: Sequence[torch.Tensor],
                  verbose: bool = False) -> onnx.ModelProto:
    """Export a plain torch model with a dynamic batch axis.

    The TorchScript exporter is tried first: it is fast and writes a plain opset-14 graph.
    The dynamo exporter (opset 18) takes over for what the first refuses (e.g. a
    ``Threshold`` with a non-zero threshold). The exporter used is recorded in the
    model's metadata (``EXPORTER_KEY``), which the debug artefacts show. Torch's tracer
    warnings stay visible: they mean the exported graph may not be the model's.
    """
    names = [f"input_{i}" for i in range(len(dummy_inputs))]
    was_training = model.training
    model.eval()
    try:
        check_runs(model, dummy_inputs)
        with _quiet_exporters(verbose):
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
                return _tagged(onnx.load_from_string(buffer.getvalue()), "torchscript")
            except Exception as first_error:  # the legacy exporter misses some ops
                try:
                    program = torch.onnx.export(
                        model,
                        tuple(dummy_inputs),
                        dynamo=True,
                        input_names=names,
                        dynamic_shapes=[{0: torch.export.Dim("batch")} for _ in names],
                        verbose=verbose,
                    )
                except Exception as second_error:
                    raise ValueError(
                        f"torch could not export the model to ONNX: {first_error}"
                    ) from second_error
                return _tagged(program.model_proto, f"dynamo (the TorchScript exporter failed: {first_error})")
    finally:
        model.train(was_training)


EXPORTER_KEY = "fheestimators.exporter"


def check_runs(model: torch.nn.Module, dummy_inputs: Sequence[torch.Tensor]) -> None:
    """Run the model once in torch: a wrong inputset gets our message, not the exporters' tracebacks."""
    try:
        with torch.no_grad():
            model(*dummy_inputs)
    except Exception as error:
        shapes = ", ".join(str(tuple(x.shape)) for x in dummy_inputs)
        raise ValueError(
            f"the model does not run on inputs shaped like the inputset ({shapes}): {error}. "
            "Give an inputset of shape (n_samples, *the model's input shape)"
        ) from None


@contextlib.contextmanager
def _quiet_exporters(verbose: bool) -> Iterator[None]:
    """Hide what the exporters print and log for their own developers, unless ``verbose``."""
    with warnings.catch_warnings():
        # deprecation notices of torch.onnx itself; tracer warnings (a UserWarning) stay
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        if verbose:
            yield
            return
        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logger.setLevel(level)


def _tagged(model: onnx.ModelProto, exporter: str) -> onnx.ModelProto:
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, EXPORTER_KEY: exporter})
    return model


def brevitas_to_onnx(model: torch.nn.Module, dummy_inputs: Sequence[torch.Tensor],
                     output_onnx_file=None) -> onnx.ModelProto:
    """Export a Brevitas model to QONNX: its quantizers become ``Quant`` nodes."""
    import tempfile
    from pathlib import Path

    from brevitas.export import export_qonnx

    was_training = model.training
    model.eval()
    try:
        check_runs(model, dummy_inputs)
        with tempfile.TemporaryDirectory() as tmp, _quiet_exporters(verbose=False):
            path = Path(output_onnx_file) if output_onnx_file is not None else Path(tmp) / "model.onnx"
            names = [f"input_{i}" for i in range(len(dummy_inputs))]
            with torch.no_grad():
                # the TorchScript exporter keeps the batch axis free and names nodes after modules
                export_qonnx(model, tuple(dummy_inputs) if len(dummy_inputs) > 1 else dummy_inputs[0],
                             export_path=str(path), opset_version=OPSET_VERSION_FOR_ONNX_EXPORT,
                             dynamo=False, input_names=names,
                             dynamic_axes={name: {0: "batch"} for name in names})
            return _tagged(onnx.load(str(path)), "brevitas export_qonnx (TorchScript)")
    finally:
        model.train(was_training)
