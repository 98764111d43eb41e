"""``QuantizedModule``: a quantized model that runs in the clear, in simulation or encrypted."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import numpy as np
from concrete import fhe

from ..fhe.artifacts import DebugArtifacts
from ..fhe.compiler import compile_function, default_configuration
from ..fhe.cost import CostModel, FheCost, estimate_cost
from ..fhe.execution import LookupNoise, run_encrypted
from ..fhe.modes import FheMode
from .bounds import sign_values
from .inputset import select_inputset
from .program import IntegerProgram
from .rounding import exact_fallback
from .steps import bit_width
from .tabulate import all_inputs
from .report import LayerReport, layer_reports, format_report
from .quantizers import MAX_ACCUMULATOR_BIT_WIDTH, MAX_TLU_BIT_WIDTH


class QuantizedModule:
    """A model as integers: quantize inputs, run the integer program, dequantize outputs.

    Built by ``build_quantized_module`` or the ``compile_*`` functions, not by hand.

    Parameters
    ----------
    program : IntegerProgram
        The integer steps, input quantizers and output dequantizers.
    onnx_model : onnx.ModelProto, optional
        The float graph it was built from.
    """

    def __init__(self, program: IntegerProgram, onnx_model=None, calibration_q=None):
        self.program = program
        self.onnx_model = onnx_model
        self.fhe_circuit: Optional[fhe.Circuit] = None
        self._calibration_q = calibration_q
        self._noise: Optional[LookupNoise] = None
        #: (bits, pruning, rounding) advice for too wide a layer, in the terms of the function
        #: that built the module (compile_torch_model's n_bits, an estimator's module__n_w_bits)
        self.overflow_hint: Optional[tuple[str, str, str]] = None
        #: per input, the lowest and highest integer of the type the circuit was compiled for
        #: (what a client can encrypt); quantized inputs are clipped to them in every mode, and
        #: each element to its own range within them, ``program.input_box``, which every value
        #: of the circuit is sized for
        self.input_ranges: Optional[list[tuple[int, int]]] = (
            _box_types(program.input_box, program.input_domains) if program.input_box is not None
            else _input_ranges(calibration_q, program.input_domains) if calibration_q is not None else None)

    # -- inputs and outputs ----------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return len(self.program.input_quantizers)

    def _check_float_inputs(self, xs) -> list[np.ndarray]:
        if len(xs) != self.n_inputs:
            raise ValueError(f"the model takes {self.n_inputs} input(s), got {len(xs)}")
        arrays = []
        for i, (x, shape) in enumerate(zip(xs, self.program.sample_shapes)):
            x = _to_numpy(x)
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                    or x.dtype == np.bool_):
                raise TypeError(f"input {i} has dtype {x.dtype}; expected numbers")
            x = x.astype(np.float64)
            if x.shape[1:] != tuple(shape):
                if x.shape == tuple(shape):
                    x = x[None]
                else:
                    raise ValueError(f"input {i} has shape {x.shape}; "
                                     f"expected (n_samples, {', '.join(map(str, shape))})")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"input {i} contains NaN or inf")
            arrays.append(x)
        return arrays

    def quantize_input(self, *x):
        """Float inputs to the integers the circuit takes.

        Values are clipped to the clip box the circuit was built for: each feature of a
        table (samples that are vectors) to its range on the inputset, each element of an
        image or a sequence to the range of the integer type holding the inputset's values
        (``bounds.clip_box``). Any finite input then runs in every mode, no value of the
        circuit can leave the range it was compiled for, and the clear, simulated and
        encrypted runs see the same integers and compute the same outputs.
        """
        q = self._clip(self._quantize(self._check_float_inputs(x)))
        return q if len(q) > 1 else q[0]

    def _quantize(self, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(quantizer.quantize(a) for quantizer, a in zip(self.program.input_quantizers, arrays))

    def _clip(self, q: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        if self.program.input_box is not None:  # each element to its own range
            return tuple(np.clip(x, low, high) for x, (low, high) in zip(q, self.program.input_box))
        if self.input_ranges is None:
            return tuple(q)
        return tuple(np.clip(x, low, high) for x, (low, high) in zip(q, self.input_ranges))

    def dequantize_output(self, *q_y):
        """Integer outputs of the circuit to floats (applying the ops left for the client)."""
        if len(q_y) != len(self.program.outputs):
            raise ValueError(f"the model has {len(self.program.outputs)} output(s), got {len(q_y)}")
        y = tuple(out.dequantize(q) for out, q in zip(self.program.outputs, q_y))
        return y if len(y) > 1 else y[0]

    def _check_q_inputs(self, q_x) -> list[np.ndarray]:
        if len(q_x) != self.n_inputs:
            raise ValueError(f"the model takes {self.n_inputs} input(s), got {len(q_x)}")
        arrays = []
        for i, (q, shape, quantizer) in enumerate(zip(q_x, self.program.sample_shapes, self.program.input_quantizers)):
            q = _to_numpy(q)
            if not np.issubdtype(q.dtype, np.integer):
                raise TypeError(f"quantized input {i} must hold integers (use quantize_input), got {q.dtype}")
            if q.shape[1:] != tuple(shape):
                raise ValueError(f"quantized input {i} has shape {q.shape}; "
                                 f"expected (n_samples, {', '.join(map(str, shape))})")
            arrays.append(q.astype(np.int64))
        return list(self._clip(arrays))

    # -- running -----------------------------------------------------------------
    def quantized_forward(self, *q_x, fhe: str = "disable", progress: bool = False, random_state: int = 0):
        """Run the integer program on quantized inputs; returns integer outputs.

        ``random_state`` seeds the simulation's draws of the bootstraps' mistakes. A row's
        draws depend on its values and the seed only, not on the rest of the batch, so a
        sample simulates the same alone or among others.
        """
        mode = FheMode.parse(fhe)
        arrays = self._check_q_inputs(q_x)
        if mode is FheMode.DISABLE or arrays[0].shape[0] == 0:
            # an empty batch has nothing to encrypt; the clear run gives the outputs' shapes
            return self.program.run(*arrays)
        self.check_model_is_compiled()
        if mode is FheMode.SIMULATE:
            if self._noise is None:
                self._noise = LookupNoise.from_circuit(self.fhe_circuit)
            return self.program.run(*arrays, round_lookup=self._noise.for_rows(arrays, random_state))
        return run_encrypted(self.fhe_circuit, arrays, progress=progress)

    def forward(self, *x, fhe: str = "disable", progress: bool = False, random_state: int = 0):
        """Float in, float out: quantize in the clear, run in the chosen mode, dequantize."""
        q_x = self.quantize_input(*x)
        q_x = q_x if isinstance(q_x, tuple) else (q_x,)
        q_y = self.quantized_forward(*q_x, fhe=fhe, progress=progress, random_state=random_state)
        return self.dequantize_output(*(q_y if isinstance(q_y, tuple) else (q_y,)))

    __call__ = forward

    def forward_and_dequant(self, *q_x):
        """The older flow: quantized input in, dequantized float output, computed in the clear."""
        q_y = self.quantized_forward(*q_x, fhe="disable")
        return self.dequantize_output(*(q_y if isinstance(q_y, tuple) else (q_y,)))

    # -- compiling ---------------------------------------------------------------
    def compile(
        self,
        inputs,
        configuration: Optional[fhe.Configuration] = None,
        artifacts: Optional[DebugArtifacts] = None,
        show_mlir: bool = False,
        p_error: Optional[float] = None,
        global_p_error: Optional[float] = None,
        verbose: bool = False,
        inputs_encryption_status: Optional[Sequence[str]] = None,
    ) -> fhe.Circuit:
        """Compile the integer program to an FHE circuit, using ``inputs`` (float) as inputset."""
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        q = self._quantize(self._check_float_inputs(inputs))
        self.check_bit_widths()
        if self.program.input_domains is not None:
            # a tabulated program: every input it accepts, so that every table entry is in the bounds
            q = all_inputs(self.program, self.program.input_domains)
        box = self.program.input_box
        if box is not None:
            # the box the program was sized for is what the module clips to; the inputset
            # must give every input the integer type that holds all of it: its ends, if needed
            q = self._clip(q)
            if _input_ranges(q) != _box_types(box):  # (a tabulated program's inputs are all there)
                q = tuple(np.concatenate([x, low[None].astype(x.dtype), high[None].astype(x.dtype)])
                          for x, (low, high) in zip(q, box))
        selected = select_inputset(self.program, q)  # the same bounds, at a cost that does not grow
        if box is not None:
            sign_values(self.program, selected)
        inputset = [tuple(x[i : i + 1] for x in selected) for i in range(selected[0].shape[0])]

        def compile_program():
            return compile_function(
                lambda *xs: self.program.run(*xs, backend="fhe"),
                inputset,
                n_inputs=self.n_inputs,
                inputs_encryption_status=inputs_encryption_status,
                configuration=configuration,
                p_error=p_error,
                global_p_error=global_p_error,
                verbose=verbose,
                show_mlir=show_mlir,
                artifacts=artifacts,
            )

        try:
            self.fhe_circuit = compile_program()
        except ValueError as error:
            # an upstream limitation with per-element tables: retry those with exact rounding
            if "could not broadcast" not in str(error) or not exact_fallback(self.program):
                raise
            warnings.warn(
                "concrete-python could not compile approximate rounding before per-element "
                "tables; those lookups round exactly instead, which costs extra bootstraps",
                RuntimeWarning, stacklevel=2,
            )
            self.fhe_circuit = compile_program()
        self.input_ranges = (_box_types(box, self.program.input_domains) if box is not None
                             else _input_ranges(q, self.program.input_domains))
        self._noise = None
        # what compile_for_deployment needs to build the same circuit with compressed keys
        self._compile_inputs = (inputset, configuration, dict(
            p_error=p_error, global_p_error=global_p_error, inputs_encryption_status=inputs_encryption_status))
        if verbose:
            print(self.report())
        return self.fhe_circuit

    def compile_for_deployment(self) -> fhe.Circuit:
        """The same circuit, compiled with compressed evaluation keys and input ciphertexts.

        Compression makes the keys and inputs a client sends several and hundreds of times
        smaller; the first run after key generation then pays seconds to expand the keys,
        so the circuit ``predict`` uses keeps the plain form. ``fhe_circuit`` is unchanged.
        """
        self.check_model_is_compiled()
        inputset, configuration, settings = self._compile_inputs
        configuration = (configuration or default_configuration()).fork(
            compress_evaluation_keys=True, compress_input_ciphertexts=True)
        return compile_function(lambda *xs: self.program.run(*xs, backend="fhe"), inputset,
                                n_inputs=self.n_inputs, configuration=configuration, **settings)

    def cost(self, model: Optional[CostModel] = None) -> FheCost:
        """What the compiled circuit costs, before any key exists: predicted seconds per
        encrypted sample and of key generation, key sizes, bootstraps and bit-widths.

        Times come from ``model``, by default the machine's calibration
        (``benchmarks/calibrate_cost.py``) or the coefficients shipped with fheestimators.
        """
        self.check_model_is_compiled()
        return estimate_cost(self.fhe_circuit, model)

    @property
    def forward_fhe(self) -> fhe.Circuit:
        """The circuit, under the name of the older documentation."""
        self.check_model_is_compiled()
        return self.fhe_circuit

    def check_model_is_compiled(self) -> None:
        if self.fhe_circuit is None:
            raise RuntimeError("the module is not compiled: call compile(inputset) first")

    def check_bit_widths(self) -> None:
        """Fail before concrete is called if a lookup would be wider than FHE allows."""
        bits, pruning, rounding = self.overflow_hint or (
            "lower the weight and activation bit-widths", "prune the weights", "set rounding_threshold_bits")
        for report in self.layer_reports():
            if report.lookup_bits is not None and report.lookup_bits > MAX_TLU_BIT_WIDTH:
                raise ValueError(
                    f"layer {report.name!r} needs a {report.lookup_bits}-bit table lookup "
                    f"(accumulator range {report.accumulator_range}); the limit is "
                    f"{MAX_TLU_BIT_WIDTH} bits: {rounding}, {bits}, or {pruning}"
                )
        if self._calibration_q is None and not self.program.value_bounds:
            return
        for step, width in self._step_bit_widths():
            if width > MAX_ACCUMULATOR_BIT_WIDTH:
                # rounding comes after the accumulator: only fewer bits or fewer terms shrink it
                where = "over the inputs' clip ranges" if self.program.value_bounds else "on the inputset"
                raise ValueError(
                    f"layer {step.name!r} produces {width}-bit integers {where}; FHE "
                    f"supports up to {MAX_ACCUMULATOR_BIT_WIDTH} bits: {bits}, or {pruning}"
                )

    def layer_reports(self) -> list[LayerReport]:
        return layer_reports(self.program)

    def report(self) -> str:
        """Per layer: accumulator bit-width, table lookups, rounding."""
        return format_report(self.layer_reports(), self.fhe_circuit)

    def _step_bit_widths(self) -> list:
        """Each step's output width: over the input box the program was sized for, else on the calibration data."""
        if self.program.value_bounds:
            return self.program.step_bit_widths()
        return self.program.step_bit_widths(*self._calibration_q) if self._calibration_q else []

    @property
    def max_bit_width(self) -> int:
        """The widest encrypted integer over the inputs the module accepts (what FHE parameters must hold);
        on the calibration data for a program not sized for its clip box."""
        widths = [w for _, w in self._step_bit_widths()]
        return max(widths + [r.accumulator_bits for r in self.layer_reports()], default=0)


def _input_ranges(q: Sequence[np.ndarray], domains: Optional[Sequence[tuple[int, int]]] = None
                  ) -> list[tuple[int, int]]:
    """Per input, the range of the integer type concrete-python gives it for this inputset.

    That type is the smallest holding the inputset's values (signed if one is negative);
    a value beyond it cannot be encrypted for the circuit, every value within it can.
    A tabulated program's tables hold its ``domains`` only: the ranges stop there too.
    """
    ranges = []
    for x in q:
        bits = bit_width(int(x.min()), int(x.max()))
        ranges.append((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if x.min() < 0 else (0, (1 << bits) - 1))
    if domains is not None:
        ranges = [(max(low, d_low), min(high, d_high)) for (low, high), (d_low, d_high) in zip(ranges, domains)]
    return ranges


def _box_types(box, domains: Optional[Sequence[tuple[int, int]]] = None) -> list[tuple[int, int]]:
    """Per input, the range of the integer type holding every element's range in ``box``.

    A tabulated program's box is its domains, already those of the tables; others are
    the types concrete-python gives the inputs (``_input_ranges``).
    """
    return _input_ranges([np.stack([np.asarray(low), np.asarray(high)]) for low, high in box], domains)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "to_numpy"):
        return x.to_numpy()
    return np.asarray(x)
