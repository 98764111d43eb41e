"""What a compiled circuit will cost, known before any key is generated.

``estimate_cost(circuit)`` reads the circuit's own counts (bootstraps and key switches per
parameter set, key parameters) and turns them into seconds with a ``CostModel``: a few
coefficients measured once per machine by ``benchmarks/calibrate_cost.py``. Without a
calibration file the coefficients measured on the development machine are used.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from concrete import fhe

#: a calibration file at this path (or under this variable's path) replaces the defaults
COST_MODEL_ENV = "FHEESTIMATORS_COST_MODEL"
_BYTES_PER_WORD = 8  # keys are 64-bit torus elements


def default_cost_model_path() -> Path:
    """``$FHEESTIMATORS_COST_MODEL``, else ``$XDG_CACHE_HOME/fheestimators/cost_model.json`` (~/.cache)."""
    if os.environ.get(COST_MODEL_ENV):
        return Path(os.environ[COST_MODEL_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fheestimators" / "cost_model.json"


@dataclass(frozen=True)
class CostModel:
    """Seconds from work counts: ``seconds = intercept + Σ coefficient × work``.

    Execution: ``execute_s = execute_intercept + execute_complexity × complexity +
    execute_bootstrap × bootstraps``, with concrete's ``complexity`` (its optimizer's
    count of the circuit's work: the bootstraps' and key switches' FFTs and products)
    and a fixed cost per bootstrap that it leaves out. Key generation:
    ``keygen_s = keygen_intercept + keygen_bootstrap_key × bootstrap-key bytes +
    keygen_bootstrap_polynomial × Σ bootstrap-key bytes × N + keygen_keyswitch_key ×
    key-switching-key bytes`` (plain bytes; encrypting a bootstrap key multiplies
    polynomials of ``N`` coefficients, which costs more per byte as ``N`` grows).
    """

    execute_intercept: float
    execute_complexity: float
    execute_bootstrap: float
    keygen_intercept: float
    keygen_bootstrap_key: float
    keygen_bootstrap_polynomial: float
    keygen_keyswitch_key: float
    #: where the coefficients come from: "default" or the calibration file's path
    source: str = "default"
    #: what the calibration recorded about itself (machine, load, fit errors)
    info: dict = field(default_factory=dict, compare=False, hash=False)

    def execute_seconds(self, work: "CircuitWork") -> float:
        return (self.execute_intercept + self.execute_complexity * work.complexity
                + self.execute_bootstrap * work.bootstraps)

    def keygen_seconds(self, work: "CircuitWork") -> float:
        return (self.keygen_intercept + self.keygen_bootstrap_key * work.bootstrap_key_bytes
                + self.keygen_bootstrap_polynomial * work.bootstrap_key_polynomial_bytes
                + self.keygen_keyswitch_key * work.keyswitch_key_bytes)

    def save(self, path: Union[str, os.PathLike, None] = None) -> Path:
        """Write the coefficients as JSON (to ``default_cost_model_path()`` by default)."""
        path = Path(path) if path is not None else default_cost_model_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "source"}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)  # a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike, None] = None) -> "CostModel":
        """The calibration at ``path`` (default: ``default_cost_model_path()``), else the defaults."""
        path = Path(path) if path is not None else default_cost_model_path()
        if not path.is_file():
            return DEFAULT_COST_MODEL
        data = json.loads(path.read_text())
        names = [f for f in cls.__dataclass_fields__ if f not in ("source", "info")]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"the cost model file {os.fspath(path)!r} lacks {missing}: "
                             "run benchmarks/calibrate_cost.py again")
        return cls(**{name: float(data[name]) for name in names}, source=os.fspath(path),
                   info=dict(data.get("info", {})))


# Measured on the development machine (2 cores, benchmarks/calibrate_cost.py); see design notes.
DEFAULT_COST_MODEL = CostModel(
    execute_intercept=0.08202,
    execute_complexity=1.247e-10,
    execute_bootstrap=0.003235,
    keygen_intercept=0.0,
    keygen_bootstrap_key=1.279e-08,
    keygen_bootstrap_polynomial=1.205e-12,
    keygen_keyswitch_key=1.27e-08,
)


@dataclass(frozen=True)
class CircuitWork:
    """The counts of a circuit that its cost grows with, read from concrete-python.

    Key sizes are those of 64-bit words: a bootstrap key holds ``n × levels × (k + 1)²
    × N`` (``n`` input LWE dimension, ``k`` GLWE dimension, ``N`` polynomial size), a
    key-switching key ``levels × n_in × (n_out + 1)``; seeded compression keeps the
    bodies only (``n × levels × (k + 1) × N``, ``levels × n_in``).
    ``bootstrap_key_polynomial_bytes`` sums each bootstrap key's bytes times its ``N``.
    """

    complexity: float
    bootstraps: int
    bootstrap_key_bytes: int
    bootstrap_key_polynomial_bytes: int
    keyswitch_key_bytes: int
    bootstrap_key_bytes_compressed: int
    keyswitch_key_bytes_compressed: int

    @classmethod
    def of(cls, circuit: fhe.Circuit) -> "CircuitWork":
        keyset = circuit.server.client_specs.program_info.get_keyset_info()
        dims = [key.dimension() for key in keyset.secret_keys()]
        bsk = bsk_polynomial = bsk_seeded = ksk = ksk_seeded = 0
        for key in keyset.bootstrap_keys():
            bodies = key.input_lwe_dimension() * (key.glwe_dimension() + 1) * key.level() * key.polynomial_size()
            bsk += bodies * (key.glwe_dimension() + 1) * _BYTES_PER_WORD
            bsk_polynomial += bodies * (key.glwe_dimension() + 1) * _BYTES_PER_WORD * key.polynomial_size()
            bsk_seeded += bodies * _BYTES_PER_WORD  # seeded: the masks are regenerated from a seed
        for key in keyset.keyswitch_keys():
            rows = key.level() * dims[key.input_secret_key_id()]
            ksk += rows * (dims[key.output_secret_key_id()] + 1) * _BYTES_PER_WORD
            ksk_seeded += rows * _BYTES_PER_WORD
        return cls(float(circuit.complexity), int(circuit.programmable_bootstrap_count),
                   bsk, bsk_polynomial, ksk, bsk_seeded, ksk_seeded)


@dataclass(frozen=True)
class FheCost:
    """What one compiled model costs in FHE: time per sample, keys, bootstraps and bit-widths.

    Times are predictions of the cost model (``calibration`` says which one); counts and
    sizes are the circuit's own.
    """

    #: predicted wall seconds of one encrypted sample (encrypt, run, decrypt) on this machine
    seconds_per_sample: float
    #: predicted seconds of key generation (done once per client and circuit)
    keygen_seconds: float
    #: evaluation keys a server needs, as ``predict``'s circuit keeps them
    evaluation_key_bytes: int
    #: the same keys compressed, as ``compile_for_deployment`` (and the deployment) ships them
    evaluation_key_bytes_compressed: int
    programmable_bootstraps: int
    key_switches: int
    #: widest encrypted integer in the circuit
    max_bit_width: int
    #: ``(bits read, number of lookups)``, narrowest first (exact rounding's own bootstraps aside)
    lookup_bit_widths: tuple[tuple[int, int], ...]
    #: ``((n, N, k, levels), bootstraps)`` per bootstrap key
    bootstrap_keys: tuple[tuple[tuple[int, int, int, int], int], ...]
    #: concrete's own estimate of the circuit's work (its optimizer's unit)
    complexity: float
    #: "default" (coefficients shipped with fheestimators) or the calibration file read
    calibration: str

    def __str__(self) -> str:
        lookups = ", ".join(f"{n} x {bits}-bit" for bits, n in self.lookup_bit_widths) or "none"
        keys = ", ".join(f"n={n} N={N} k={k} levels={levels}: {count} bootstraps"
                         for (n, N, k, levels), count in self.bootstrap_keys) or "none"
        return "\n".join([
            f"FHE cost (predicted with the {self.calibration} cost model)",
            f"  seconds per encrypted sample: {self.seconds_per_sample:.2f}",
            f"  key generation seconds:       {self.keygen_seconds:.1f}",
            f"  evaluation keys:              {self.evaluation_key_bytes / 2**20:.1f} MiB "
            f"({self.evaluation_key_bytes_compressed / 2**20:.1f} MiB compressed)",
            f"  bootstraps:                   {self.programmable_bootstraps} ({keys})",
            f"  table lookups:                {lookups}",
            f"  widest encrypted integer:     {self.max_bit_width} bits",
        ])


def lookup_bit_widths(circuit: fhe.Circuit) -> tuple[tuple[int, int], ...]:
    """``(bits, lookups)`` of the circuit's table lookups: what each bootstrap reads."""
    counts: dict[int, int] = {}
    for node in circuit.graph.query_nodes(custom_filter=lambda n: n.converted_to_table_lookup):
        if node.properties.get("name") == "round_bit_pattern":
            continue  # exact rounding's bootstraps are counted by concrete, not lookups of ours
        widths = [_bits_read(pred) for pred in circuit.graph.ordered_preds_of(node) if pred.output.is_encrypted]
        if widths:
            width = max(widths)
            counts[width] = counts.get(width, 0) + int(math.prod(node.output.shape))
    return tuple(sorted(counts.items()))


def _bits_read(node) -> int:
    """The bits a lookup reads from ``node``: a rounding node's output keeps its removed bits' places."""
    width = node.output.dtype.bit_width
    if node.properties.get("name") == "round_bit_pattern":
        width -= int(node.properties["kwargs"]["lsbs_to_remove"])
    return width


def estimate_cost(circuit: fhe.Circuit, model: Optional[CostModel] = None) -> FheCost:
    """The cost of ``circuit`` predicted by ``model`` (default: ``CostModel.load()``)."""
    model = model if model is not None else CostModel.load()
    work = CircuitWork.of(circuit)
    bootstrap_keys = tuple(sorted(
        ((p.input_lwe_dimension(), p.polynomial_size(), p.glwe_dimension(), p.level()), int(count))
        for p, count in circuit.programmable_bootstrap_count_per_parameter.items()))
    return FheCost(
        seconds_per_sample=max(model.execute_seconds(work), 0.0),
        keygen_seconds=max(model.keygen_seconds(work), 0.0),
        evaluation_key_bytes=work.bootstrap_key_bytes + work.keyswitch_key_bytes,
        evaluation_key_bytes_compressed=work.bootstrap_key_bytes_compressed + work.keyswitch_key_bytes_compressed,
        programmable_bootstraps=work.bootstraps,
        key_switches=int(circuit.key_switch_count),
        max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
        lookup_bit_widths=lookup_bit_widths(circuit),
        bootstrap_keys=bootstrap_keys,
        complexity=work.complexity,
        calibration=model.source,
    )


def fit_cost_model(rows: list[dict], info: Optional[dict] = None) -> CostModel:
    """Non-negative least squares of measured seconds on the work counts.

    Each row has the fields of ``CircuitWork`` plus ``execute_s`` and ``keygen_s``
    (measured). Errors are relative: each row is weighted by ``1 / measured``, so that
    small circuits count as much as large ones.
    """
    import numpy as np
    from scipy.optimize import nnls

    def solve(columns: list[str], target: str) -> list[float]:
        y = np.array([row[target] for row in rows], dtype=float)
        design = np.array([[1.0] + [float(row[c]) for c in columns] for row in rows])
        scale = design.max(axis=0)  # the works are ~1e10: scale columns for a stable solve
        coefficients, _ = nnls(design / scale / y[:, None], np.ones_like(y))
        return list(coefficients / scale)

    execute = solve(["complexity", "bootstraps"], "execute_s")
    keygen = solve(["bootstrap_key_bytes", "bootstrap_key_polynomial_bytes", "keyswitch_key_bytes"], "keygen_s")
    return CostModel(*execute, *keygen, source="fitted", info=dict(info or {}))
