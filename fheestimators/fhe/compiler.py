"""Compile a traced integer function with concrete-python."""
from __future__ import annotations

import inspect
from numbers import Real
from typing import Callable, Optional, Sequence

import numpy as np
from concrete import fhe

from .._threads import one_torch_thread
from .artifacts import DebugArtifacts


def default_configuration() -> fhe.Configuration:
    """Our defaults: multi-parameter selection (each bit-width gets its own keys)."""
    return fhe.Configuration(
        parameter_selection_strategy=fhe.ParameterSelectionStrategy.MULTI,
        show_progress=False,
    )


def per_norm_configuration() -> fhe.Configuration:
    """Our defaults, with lookups grouped by their inputs' weights' norm as well as by bit-width.

    Each group gets its own keys: lookups fed by fresh inputs or by a rounded layer need
    far less precise bootstraps than those whose outputs feed the circuit's exact output
    layer, and no longer pay for them. More keys, cheaper bootstraps (design notes, TinyCNN).
    """
    return default_configuration().fork(multi_parameter_strategy=fhe.MultiParameterStrategy.PRECISION_AND_NORM2)


def compile_function(
    function: Callable,
    inputset: Sequence[tuple[np.ndarray, ...]],
    n_inputs: int,
    inputs_encryption_status: Optional[Sequence[str]] = None,
    configuration: Optional[fhe.Configuration] = None,
    p_error: Optional[float] = None,
    global_p_error: Optional[float] = None,
    verbose: bool = False,
    show_mlir: bool = False,
    artifacts: Optional[DebugArtifacts] = None,
) -> fhe.Circuit:
    """Trace ``function`` (``n_inputs`` positional integer tensors) and compile it."""
    statuses = list(inputs_encryption_status or ["encrypted"] * n_inputs)
    if len(statuses) != n_inputs:
        raise ValueError(f"inputs_encryption_status has {len(statuses)} entries for {n_inputs} inputs")
    for status in statuses:
        if status not in ("encrypted", "clear"):
            raise ValueError(f"encryption status {status!r} is not 'encrypted' or 'clear'")
    if "encrypted" not in statuses:
        raise ValueError("at least one input must be encrypted")
    if p_error is not None and global_p_error is not None:
        raise ValueError("set p_error or global_p_error, not both")
    for name, value in (("p_error", p_error), ("global_p_error", global_p_error)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1):
            raise ValueError(f"{name}={value!r} is not a probability in (0, 1): use for instance 0.01")
    names = [f"x{i}" for i in range(n_inputs)]

    def circuit_function(**kwargs):
        return function(*(kwargs[name] for name in names))

    circuit_function.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    config = configuration if configuration is not None else default_configuration()
    overrides = {"verbose": verbose, "show_mlir": show_mlir}
    if p_error is not None:
        overrides.update(p_error=p_error, global_p_error=None)
    elif global_p_error is not None:
        overrides.update(global_p_error=global_p_error, p_error=None)
    config = config.fork(**overrides)
    compiler = fhe.Compiler(circuit_function, dict(zip(names, statuses)))
    samples = [tuple(sample) if n_inputs > 1 else sample[0] for sample in inputset]
    fhe_artifacts = artifacts.fhe if artifacts is not None else None
    try:
        with one_torch_thread():
            circuit = compiler.compile(samples, configuration=config, artifacts=fhe_artifacts)
    except RuntimeError as error:
        if "NoParametersFound" not in str(error):
            raise
        raise ValueError(
            "concrete-python found no crypto-parameters for this circuit: its integers are "
            "too wide for the requested error probability; lower n_bits, set "
            "rounding_threshold_bits, or raise p_error"
        ) from error
    if artifacts is not None:
        artifacts.mlir = circuit.mlir
    return circuit
