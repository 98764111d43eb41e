"""The torch front door: torch, Brevitas and ONNX models to FHE-ready ``QuantizedModule``s."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch
from concrete import fhe

from ..fhe.artifacts import DebugArtifacts
from ..fhe.compiler import per_norm_configuration
from ..onnx.export import OPSET_VERSION_FOR_ONNX_EXPORT, brevitas_to_onnx, torch_to_onnx
from ..onnx.graph import Graph
from ..quantization import bounds
from ..quantization.bounds import clip_box
from ..quantization.builder import build_program
from ..quantization.dead_lookups import remove_dead_lookups
from ..quantization.module import QuantizedModule, _input_ranges
from ..quantization.quantizers import NBits
from ..quantization.rounding import AUTO_EXACT, RoundingLike, apply_rounding
from ..quantization.tabulate import input_domains, tabulate
from .overflow import raise_with_setting

__all__ = [
    "MAX_BITWIDTH_BACKWARD_COMPATIBLE",
    "OPSET_VERSION_FOR_ONNX_EXPORT",
    "build_quantized_module",
    "compile_brevitas_qat_model",
    "compile_onnx_model",
    "compile_torch_model",
    "convert_torch_tensor_or_numpy_array_to_numpy_array",
    "has_any_qnn_layers",
]

# Named by the specification's API; unused here (bit-widths are checked against concrete's limits).
MAX_BITWIDTH_BACKWARD_COMPATIBLE = 8
Inputset = Union[torch.Tensor, np.ndarray, Tuple[Union[torch.Tensor, np.ndarray], ...]]


class OverflowHint(NamedTuple):
    """What the error for a layer too wide for FHE advises, in the terms of the function called.

    ``QuantizedModule.check_bit_widths`` reads it from the module's ``overflow_hint``.
    """

    bits: str
    pruning: str
    rounding: str


PTQ_OVERFLOW_HINT = OverflowHint(
    "lower n_bits", "prune the model's weights (e.g. with torch.nn.utils.prune)",
    "set rounding_threshold_bits (e.g. 8)")
ONNX_OVERFLOW_HINT = PTQ_OVERFLOW_HINT._replace(pruning="prune the model's weights before exporting it to ONNX")
QAT_OVERFLOW_HINT = OverflowHint(
    "give the Brevitas quantizers fewer bits (weight_bit_width, bit_width)",
    "prune the model's weights (e.g. with torch.nn.utils.prune)",
    "set rounding_threshold_bits to fewer bits (e.g. 8)")


def has_any_qnn_layers(torch_model: torch.nn.Module) -> bool:
    """Tell a Brevitas (QAT) model from a plain torch one.

    Parameters
    ----------
    torch_model : torch.nn.Module

    Returns
    -------
    bool
        True if any sub-module comes from ``brevitas.nn``.
    """
    return any(type(m).__module__.startswith("brevitas.nn") for m in torch_model.modules())


def convert_torch_tensor_or_numpy_array_to_numpy_array(
    torch_tensor_or_numpy_array: Union[torch.Tensor, np.ndarray],
) -> np.ndarray:
    """Return a numpy array for a torch tensor (detached, on CPU) or a numpy array."""
    if isinstance(torch_tensor_or_numpy_array, torch.Tensor):
        return torch_tensor_or_numpy_array.detach().cpu().numpy()
    if isinstance(torch_tensor_or_numpy_array, np.ndarray):
        return torch_tensor_or_numpy_array
    raise TypeError(
        f"expected a torch.Tensor or a numpy.ndarray, got {type(torch_tensor_or_numpy_array).__name__}"
    )


def _inputset_arrays(torch_inputset: Inputset) -> tuple[np.ndarray, ...]:
    items = torch_inputset if isinstance(torch_inputset, (tuple, list)) else (torch_inputset,)
    arrays = []
    for i, item in enumerate(items):
        array = convert_torch_tensor_or_numpy_array_to_numpy_array(item)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"inputset {i} has dtype {array.dtype}; expected numbers")
        if array.ndim < 1 or array.shape[0] == 0:
            raise ValueError("the inputset is empty: give at least one sample (ideally hundreds)")
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"inputset {i} contains NaN or inf")
        arrays.append(array)
    if len({a.shape[0] for a in arrays}) > 1:
        raise ValueError("every input of the inputset must have the same number of samples")
    return tuple(arrays)


def build_quantized_module(
    model: Union[torch.nn.Module, onnx.ModelProto],
    torch_inputset: Inputset,
    import_qat: bool = False,
    n_bits: Union[int, Dict[str, int]] = 8,
    rounding_threshold_bits: RoundingLike = None,
    reduce_sum_copy: bool = False,
) -> QuantizedModule:
    """Quantize a torch or ONNX model into a ``QuantizedModule``, without compiling it.

    Parameters
    ----------
    model : torch.nn.Module or onnx.ModelProto
    torch_inputset : tensor, array or tuple of them
        Calibration data, one array per model input, samples on the first axis.
    import_qat : bool
        The model carries its own quantizers (QAT): keep them instead of re-quantizing.
    n_bits : int or dict
        An int, or a dict with ``op_inputs`` and ``op_weights`` (and optionally
        ``model_inputs``, and ``model_outputs``, accepted for compatibility and unused:
        outputs leave the circuit as exact accumulators and are dequantized in the clear).
    rounding_threshold_bits : None, int, sequence or dict
        Round accumulators to this many bits before each table lookup; a sequence gives
        one entry per lookup in the network's order (the last one for further lookups);
        a dict gives ``n_bits`` (any of those, or "auto") and ``method`` ("exact" or
        "approximate"). None (the default) keeps every accumulator whole: encrypted
        results equal the clear ones exactly, at the highest cost. ``"auto"`` gives each
        table the fewest bits that leave the model's decisions (argmax, or the value to
        1% of its range) unchanged on all but 0.2% of the calibration samples: often
        several times faster.
    reduce_sum_copy : bool
        Accepted for compatibility: sums never widen their inputs here.

    Returns
    -------
    QuantizedModule
    """
    brevitas = isinstance(model, torch.nn.Module) and has_any_qnn_layers(model)
    return _build(model, torch_inputset, import_qat or brevitas, n_bits, rounding_threshold_bits, brevitas=brevitas)


def _build(model, torch_inputset, import_qat, n_bits, rounding_threshold_bits, brevitas=False,
           output_onnx_file=None) -> QuantizedModule:
    arrays = _inputset_arrays(torch_inputset)
    parsed_bits = NBits.parse(n_bits)
    if brevitas:
        onnx_model = brevitas_to_onnx(model, _dummy_inputs(arrays), output_onnx_file)
    elif isinstance(model, onnx.ModelProto):
        onnx_model = model
    elif isinstance(model, torch.nn.Module):
        onnx_model = torch_to_onnx(model, _dummy_inputs(arrays))
    else:
        raise TypeError(f"expected a torch.nn.Module or an onnx.ModelProto, got {type(model).__name__}")
    graph = Graph.from_onnx(onnx_model)
    if len(graph.inputs) != len(arrays):
        raise ValueError(f"the model takes {len(graph.inputs)} input(s) but the inputset has {len(arrays)}")
    program = build_program(graph, arrays, parsed_bits, qat=import_qat or brevitas, strict_qat=brevitas)
    remove_dead_lookups(program)
    calibration_q = tuple(q.quantize(a) for q, a in zip(program.input_quantizers, arrays))
    types = _input_ranges(calibration_q)  # what concrete-python can encrypt for this inputset
    # few input combinations: one exact lookup per output, which rounding could only spoil
    if tabulate(program, input_domains(program.input_quantizers, types)):
        box = _input_ranges(calibration_q, program.input_domains)  # every combination is in the tables
    elif bounds.SIZING == "inputset":  # the inputset's rows only (bounds.sizing)
        apply_rounding(program, calibration_q, rounding_threshold_bits)
        program.measure_bounds(*calibration_q)
        box = None
    else:
        # the clip box: every value is sized for every input within it, not for the inputset's rows
        box = clip_box(calibration_q, types)
        apply_rounding(program, calibration_q, rounding_threshold_bits, input_ranges=box)
        # the input quantizers clip each element to its range, in the module and on a client
        program.input_quantizers = [
            quantizer if np.all(low == type_low) and np.all(high == type_high)
            else replace(quantizer, element_min=low, element_max=high)
            for quantizer, (low, high), (type_low, type_high) in zip(program.input_quantizers, box, types)]
    if box is not None:
        program.size_for_box(box)
    module = QuantizedModule(program, onnx_model=onnx_model, calibration_q=calibration_q)
    # read when compiling: advise what the function the user called accepts
    module.overflow_hint = _ADVICE.get() or _overflow_hint(model, brevitas)
    return module


_ADVICE: ContextVar[Optional[OverflowHint]] = ContextVar("overflow_advice", default=None)


@contextmanager
def overflow_advice(hint: OverflowHint) -> Iterator[None]:
    """Within this block, the compile functions advise ``hint`` for too wide a layer.

    For doors built on them (the estimators), whose users set other parameters.
    """
    token = _ADVICE.set(hint)
    try:
        yield
    finally:
        _ADVICE.reset(token)


def _overflow_hint(model, brevitas: bool) -> OverflowHint:
    if brevitas:
        return QAT_OVERFLOW_HINT
    return ONNX_OVERFLOW_HINT if isinstance(model, onnx.ModelProto) else PTQ_OVERFLOW_HINT


def _dummy_inputs(arrays) -> list[torch.Tensor]:
    """Two samples for the exporter: a batch of one would let it fix the batch size."""
    return [torch.from_numpy(a[:2] if a.shape[0] > 1 else np.repeat(a, 2, axis=0)).float() for a in arrays]


def _compile(module: QuantizedModule, arrays, configuration, artifacts, show_mlir, p_error,
             global_p_error, verbose, inputs_encryption_status) -> QuantizedModule:
    if artifacts is not None:
        artifacts.onnx_model = module.onnx_model
        artifacts.quantized_graph = module.report()
    module.compile(arrays, configuration=configuration, artifacts=artifacts, show_mlir=show_mlir,
                   p_error=p_error, global_p_error=global_p_error, verbose=verbose,
                   inputs_encryption_status=inputs_encryption_status)
    return module


# keys per norm group are kept when they predict at most this fraction of the seconds per
# sample of keys per bit-width only: more keys (up to twice the bytes) for less is no gain
PER_NORM_MAX_SECONDS = 0.8


def _compile_cheaper(module: QuantizedModule, arrays, configuration, artifacts, show_mlir, p_error,
                     global_p_error, verbose, inputs_encryption_status) -> QuantizedModule:
    """``_compile``; without a user's ``configuration``, the circuit is compiled again with keys per
    norm group (``per_norm_configuration``) and that one kept if predicted much faster, then at a
    lower ``p_error`` where that costs little (``_more_precise``).

    With keys per bit-width only, every lookup of a bit-width pays for the most precise
    one: those whose outputs feed the exact output layer. With few lookups, the extra keys
    and key switches can cost more than they save (design notes, TinyCNN).
    """
    _compile(module, arrays, configuration, artifacts, show_mlir, p_error, global_p_error, verbose,
             inputs_encryption_status)
    if configuration is not None or len(module.program.table_lookups) < 2:
        return module
    # the MLIR and the report are those of the circuit above: only the keys differ
    _kept_if_within(module, arrays, PER_NORM_MAX_SECONDS * module.cost().seconds_per_sample,
                    configuration=per_norm_configuration(), p_error=p_error, global_p_error=global_p_error,
                    inputs_encryption_status=inputs_encryption_status)
    _more_precise(module, arrays, p_error, inputs_encryption_status)
    return module


def _kept_if_within(module: QuantizedModule, arrays, seconds: float, **settings) -> bool:
    """Compile ``module`` again with ``settings``; keep that circuit if the cost model predicts at most
    ``seconds`` per sample, else restore the one before. Whether it was kept."""
    before = module.fhe_circuit, module._compile_inputs
    try:
        module.compile(arrays, **settings)
        if module.cost().seconds_per_sample <= seconds:
            return True
    except (ValueError, RuntimeError):  # no parameters for these settings: the circuit before stands
        pass
    module.fhe_circuit, module._compile_inputs = before
    return False


# a user's p_error is a cap: approximately rounded lookups misread far more often than it (design
# notes, TinyCNN), so a lower one is kept while predicted at most this factor slower than the user's
MORE_PRECISE_MAX_SECONDS = 1.1
# each try divides the error probability by this, at most this many times
MORE_PRECISE_STEP = 2.0
MORE_PRECISE_TRIES = 2
# below this, a halving narrows the noise by 8% or less (it is 16% from 0.1 to 0.05): not worth two compiles
MORE_PRECISE_MIN_P_ERROR = 0.01


def _more_precise(module: QuantizedModule, arrays, p_error, inputs_encryption_status) -> None:
    """Compile again at ``p_error / MORE_PRECISE_STEP`` (and so on) while the cost model predicts at
    most ``MORE_PRECISE_MAX_SECONDS`` times the seconds per sample at ``p_error``; keep the last such.

    Only for a ``p_error`` the user gave (``MORE_PRECISE_MIN_P_ERROR`` or more) and approximately
    rounded lookups: there the bootstrap's noise moves a read to the neighbouring entry for about
    ``0.8 * sigma`` of the lookups (24% at ``p_error=0.1``), not ``p_error`` of them, and a lower
    ``p_error`` narrows ``sigma``.
    """
    approximate = any(step.lsbs_to_remove and step.exactness == "approximate" for step in module.program.table_lookups)
    if p_error is None or p_error < MORE_PRECISE_MIN_P_ERROR or not approximate:
        return
    configuration = module._compile_inputs[1]
    budget = MORE_PRECISE_MAX_SECONDS * module.cost().seconds_per_sample
    candidate = p_error
    for _ in range(MORE_PRECISE_TRIES):
        candidate /= MORE_PRECISE_STEP
        if not _kept_if_within(module, arrays, budget, configuration=configuration, p_error=candidate,
                               inputs_encryption_status=inputs_encryption_status):
            return


def _check_or_suggest(module: QuantizedModule, torch_inputset, import_qat, n_bits, rounding, settings,
                      function: str) -> None:
    """The bit-width check; on failure, the error names a setting that compiles, if one is found."""
    try:
        module.check_bit_widths()
    except ValueError as error:
        arrays = _inputset_arrays(torch_inputset)
        # the exported graph is reused: each candidate is a quantization, not an export
        raise_with_setting(
            error, module, lambda bits, rounds: _build(module.onnx_model, arrays, import_qat, bits, rounds),
            n_bits, rounding, lambda candidate: _compile(candidate, arrays, *settings), function)


def compile_torch_model(
    torch_model: torch.nn.Module,
    torch_inputset: Inputset,
    import_qat: bool = False,
    configuration: Optional[fhe.Configuration] = None,
    artifacts: Optional[DebugArtifacts] = None,
    show_mlir: bool = False,
    n_bits: Union[int, Dict[str, int]] = 8,
    rounding_threshold_bits: RoundingLike = None,
    p_error: Optional[float] = None,
    global_p_error: Optional[float] = None,
    verbose: bool = False,
    inputs_encryption_status: Optional[Sequence[str]] = None,
    reduce_sum_copy: bool = False,
) -> QuantizedModule:
    """Quantize a trained torch model after training (PTQ) and compile it to FHE.

    Parameters are those of ``build_quantized_module``, plus:

    configuration : concrete.fhe.Configuration, optional
        Compiler settings. By default, multi-parameter selection: keys per bit-width of
        the lookups, or, if predicted at least 20% faster per sample, keys per bit-width
        and norm of the weights before each lookup (``fhe.compiler.per_norm_configuration``:
        more keys, cheaper bootstraps; networks of 2 lookup layers or more are compiled
        twice to compare).
    artifacts : DebugArtifacts, optional
        Filled with the ONNX model, the quantized graph and the MLIR.
    show_mlir, verbose : bool
        Print the MLIR / the per-layer report.
    p_error, global_p_error : float, optional
        Error probability of one bootstrap / of the whole circuit (give at most one).
        A ``p_error`` of 0.01 or more is a cap: without a configuration, a network of 2
        lookup layers or more with approximately rounded lookups is compiled again at ``p_error / 2`` and
        ``/ 4``, each kept if predicted at most 10% slower per sample than at ``p_error``
        (approximate rounding reads the neighbouring entry far more often than
        ``p_error``; a lower one narrows the noise). ``module.fhe_circuit.p_error`` is
        the one compiled.
    inputs_encryption_status : sequence of "encrypted" / "clear", optional

    Returns
    -------
    QuantizedModule
        Compiled: ``forward(x, fhe="execute")`` runs encrypted.
    """
    if not isinstance(torch_model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(torch_model).__name__}")
    module = build_quantized_module(torch_model, torch_inputset, import_qat=import_qat, n_bits=n_bits,
                                    rounding_threshold_bits=rounding_threshold_bits,
                                    reduce_sum_copy=reduce_sum_copy)
    settings = (configuration, None, False, p_error, global_p_error, False, inputs_encryption_status)
    _check_or_suggest(module, torch_inputset, import_qat, n_bits, rounding_threshold_bits, settings,
                      "compile_torch_model")
    return _compile_cheaper(module, _inputset_arrays(torch_inputset), configuration, artifacts, show_mlir,
                            p_error, global_p_error, verbose, inputs_encryption_status)


def compile_onnx_model(
    onnx_model: onnx.ModelProto,
    torch_inputset: Inputset,
    import_qat: bool = False,
    configuration: Optional[fhe.Configuration] = None,
    artifacts: Optional[DebugArtifacts] = None,
    show_mlir: bool = False,
    n_bits: Union[int, Dict[str, int]] = 8,
    rounding_threshold_bits: RoundingLike = None,
    p_error: Optional[float] = None,
    global_p_error: Optional[float] = None,
    verbose: bool = False,
    inputs_encryption_status: Optional[Sequence[str]] = None,
    reduce_sum_copy: bool = False,
) -> QuantizedModule:
    """Quantize and compile an ONNX model (e.g. exported from Keras); see ``compile_torch_model``."""
    if not isinstance(onnx_model, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto, got {type(onnx_model).__name__}")
    module = build_quantized_module(onnx_model, torch_inputset, import_qat=import_qat, n_bits=n_bits,
                                    rounding_threshold_bits=rounding_threshold_bits,
                                    reduce_sum_copy=reduce_sum_copy)
    settings = (configuration, None, False, p_error, global_p_error, False, inputs_encryption_status)
    _check_or_suggest(module, torch_inputset, import_qat, n_bits, rounding_threshold_bits, settings,
                      "compile_onnx_model")
    return _compile_cheaper(module, _inputset_arrays(torch_inputset), configuration, artifacts, show_mlir,
                            p_error, global_p_error, verbose, inputs_encryption_status)


def compile_brevitas_qat_model(
    torch_model: torch.nn.Module,
    torch_inputset: Inputset,
    n_bits: Optional[Union[int, Dict[str, int]]] = None,
    configuration: Optional[fhe.Configuration] = None,
    artifacts: Optional[DebugArtifacts] = None,
    show_mlir: bool = False,
    rounding_threshold_bits: RoundingLike = AUTO_EXACT,
    p_error: Optional[float] = None,
    global_p_error: Optional[float] = None,
    output_onnx_file: Union[None, Path, str] = None,
    verbose: bool = False,
    inputs_encryption_status: Optional[Sequence[str]] = None,
    reduce_sum_copy: bool = False,
) -> QuantizedModule:
    """Compile a Brevitas quantization-aware-trained model, keeping its trained quantizers.

    Bit-widths, scales and zero-points are read from the Brevitas quantizers: nothing
    Brevitas quantized is quantized again, so the module predicts what the Brevitas
    model predicts (exactly with ``rounding_threshold_bits=None``; with the default
    rounding, the same decisions on all but 0.2% of the inputset). The network must
    start with a ``QuantIdentity`` and quantize the input of every linear layer
    (``QuantIdentity`` / ``QuantReLU``). The parameters not listed below are those of
    ``compile_torch_model``.

    Parameters
    ----------
    torch_model : torch.nn.Module
        A trained model built with ``brevitas.nn`` layers.
    torch_inputset : tensor, array or tuple of them
        Representative inputs, for compilation.
    n_bits : None, int or dict
        None uses the Brevitas settings. An int or a dict with ``model_inputs`` /
        ``model_outputs`` sets the bits of values the model does not quantize itself
        (e.g. an encrypted addition of two branches); default 8.
    rounding_threshold_bits : None, int, sequence or dict
        As for ``compile_torch_model``, but the default here is
        ``{"n_bits": "auto", "method": "exact"}``: each accumulator is rounded to the
        fewest bits that keep the model's decisions on all but 0.2% of the inputset
        (at least 100 samples; fewer keep every accumulator whole), exactly, so the
        encrypted run equals the simulation. The low-bit activations of QAT networks
        make this cheap in accuracy and 3 to 6 times faster in FHE. None gives the
        Brevitas outputs exactly. Inputs that take at most 64 combinations in all
        (2 features of 3 bits) skip rounding: the network becomes one exact lookup per
        output (``quantization/tabulate.py``), with the Brevitas outputs exactly.
    output_onnx_file : str or Path, optional
        Where to keep the exported QONNX model (a temporary file otherwise).

    Returns
    -------
    QuantizedModule
    """
    if not isinstance(torch_model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(torch_model).__name__}")
    if not has_any_qnn_layers(torch_model):
        raise ValueError("the model has no brevitas layer: use compile_torch_model for plain torch models")
    bits = 8 if n_bits is None else n_bits
    if isinstance(bits, dict):
        bits = {"op_inputs": 8, "op_weights": 8, **bits}
    module = _build(torch_model, torch_inputset, True, bits, rounding_threshold_bits, brevitas=True,
                    output_onnx_file=output_onnx_file)
    return _compile(module, _inputset_arrays(torch_inputset), configuration, artifacts, show_mlir,
                    p_error, global_p_error, verbose, inputs_encryption_status)
