"""When a network is too wide for FHE, find a setting of the compile function that fits.

``compile_torch_model`` and ``compile_onnx_model`` call ``raise_with_setting`` when their
module fails the bit-width check: it tries a few ``rounding_threshold_bits`` and
``n_bits`` values with the same check, compiles the first that passes, and adds it and
its predicted cost to the error message.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Union

from ..quantization.module import QuantizedModule
from ..quantization.quantizers import MAX_TLU_BIT_WIDTH

# Accumulators are rounded to this many bits when the user did not round: the widest
# lookups whose keys take seconds to generate at a loose p_error (design notes).
ROUNDING = 8
# A network needing fewer than this many bits would not be worth suggesting.
MIN_N_BITS = 3
# concrete-python found no crypto-parameters for circuits whose widest integer was
# 19 bits (a 3x3 CNN on 8x8 digits), and found some at 16: wider ones are not compiled.
MAX_COMPILABLE_BIT_WIDTH = 16
# Each candidate costs a quantization (a fraction of a second), the one kept a compilation.
MAX_CANDIDATES = 10

Build = Callable[[Union[int, dict], object], QuantizedModule]


def candidates(n_bits: Union[int, dict], rounding, lookups_too_wide: bool = True
               ) -> Iterator[tuple[Union[int, dict], object]]:
    """``(n_bits, rounding_threshold_bits)`` to try, most accurate first.

    With lookups too wide, the user's rounding (or ``ROUNDING`` bits if none) at the
    user's ``n_bits``, then at fewer bits: rounding shrinks the lookups, fewer bits the
    accumulators too. Accumulators too wide (after the last lookup) only shrink with fewer bits.
    """
    rounds = rounding if rounding is not None or not lookups_too_wide else ROUNDING
    if rounds is not rounding:
        yield n_bits, rounds
    if isinstance(n_bits, int):
        for lower in range(n_bits - 1, MIN_N_BITS - 1, -1):
            yield lower, rounds


def find_setting(build: Build, n_bits, rounding, compile_module: Callable[[QuantizedModule], None],
                 lookups_too_wide: bool = True) -> Optional[tuple[dict, QuantizedModule]]:
    """The first candidate that passes the bit-width check and compiles, with its module.

    The setting lists the arguments that differ from the user's.
    """
    for i, (bits, rounds) in enumerate(candidates(n_bits, rounding, lookups_too_wide)):
        if i >= MAX_CANDIDATES:
            break
        try:
            module = build(bits, rounds)
            module.check_bit_widths()
            if module.max_bit_width > MAX_COMPILABLE_BIT_WIDTH:
                continue  # concrete would spend seconds finding no parameters
            compile_module(module)
        except ValueError:  # still too wide, or no crypto-parameters: the next one
            continue
        changed = {"n_bits": (bits, n_bits), "rounding_threshold_bits": (rounds, rounding)}
        return {name: new for name, (new, old) in changed.items() if new != old}, module
    return None


def describe(setting: dict, module: QuantizedModule, function: str) -> str:
    """One sentence: the setting, as arguments of ``function``, and what it costs."""
    arguments = ", ".join(f"{name}={value!r}" for name, value in setting.items())
    cost = module.cost()
    widest = max((bits for bits, _ in cost.lookup_bit_widths), default=0)
    return (f"{function}(..., {arguments}) compiles: {cost.programmable_bootstraps} bootstraps on lookups of "
            f"up to {widest} bits, predicted {cost.seconds_per_sample:.2g} s per encrypted sample, "
            f"{cost.keygen_seconds:.2g} s of key generation and "
            f"{cost.evaluation_key_bytes_compressed / 2**20:.0f} MiB of compressed evaluation keys "
            f"({cost.calibration} cost model)")


def raise_with_setting(error: ValueError, module: QuantizedModule, build: Build, n_bits, rounding,
                       compile_module: Callable[[QuantizedModule], None], function: str) -> None:
    """Raise ``error`` (``module`` failed the check), with a setting that compiles when one is found."""
    lookups_too_wide = any(report.lookup_bits is not None and report.lookup_bits > MAX_TLU_BIT_WIDTH
                           for report in module.layer_reports())
    found = find_setting(build, n_bits, rounding, compile_module, lookups_too_wide)
    if found is None:
        raise error
    raise ValueError(f"{error}. {describe(*found, function)}") from error
