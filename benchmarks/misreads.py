"""Does ``fhe="simulate"`` misread rounded lookups as often as encryption does? Many key sets.

For each lookup (an accumulator of ``W`` bits rounded approximately, or exactly with
``--rounding exact``, ``lsbs`` bits removed, read by an identity table) and each
``p_error``: the circuit is compiled once, then keys
are generated ``--keysets`` times (``keygen(force=True, seed=k, encryption_seed=k)``) and
the same inputs are encrypted, run and decrypted under each key set. Every residue of the
removed bits appears equally often among the inputs. A misread is a decrypted output nearer
another entry than the rounded input's (``outputs_off_the_entries`` counts the decrypted
outputs that are not on an entry at all: the output's own decryption noise).

Printed per lookup and ``p_error``:

- ``encrypted``: the misread rate per key set, pooled, and the spread between key sets
  against what sampling alone gives for these fixed inputs (a chi-square test of
  homogeneity: a small p-value would mean the rate depends on the key set);
- ``ours``: ``LookupNoise`` (this tree) on the same inputs, 200 draws each;
- ``key_set_1_again``: key set 1's seeds once more: the outputs differ (the seeds fix the
  secret keys and the masks; concrete-cpu draws the noise from the operating system);
- ``concrete``: concrete-python's own ``circuit.simulate``, 100 runs of each row;
- ``model`` (approximate rounding): the rate expected from the noise's standard deviation (``0.5 / z`` entries,
  ``z`` the normal quantile of ``1 - p_error / 2``) with the middle between two entries
  where the old ``LookupNoise`` put it (``unit / 2 - 0.5``) and where concrete-python's
  encoding puts it (``unit / 2 - 0.5 - 2**(W - 1) / N``, ``N`` the bootstrap's polynomial
  size), and the log-likelihood of the encrypted per-residue counts under each;
- ``fit`` (approximate rounding): the middle and the standard deviation that fit the
  encrypted counts best (maximum likelihood, with standard errors), and those of ours and of
  concrete-python's simulation.

Run: ``python benchmarks/misreads.py > benchmarks/results_misreads.json`` (about 12 minutes
on 2 loaded cores) and ``python benchmarks/misreads.py --rounding exact >
benchmarks/results_misreads_exact.json`` (about 3 minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from concrete import fhe
from scipy import optimize, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine  # noqa: E402

from fheestimators.fhe.execution import LookupNoise  # noqa: E402
from fheestimators.quantization.steps import TableLookup  # noqa: E402

#: (accumulator bits, bits removed, p_errors, rows of 64 reads per key set)
APPROXIMATE = [
    (10, 4, (0.02, 0.1, 0.3), 8),  # tests/fhe/test_simulation.py's lookup
    (11, 3, (0.3,), 4),  # an 8-bit table at the estimators' p_error, as the checkerboard's default rounds to
    (6, 3, (0.02, 0.3), 8),  # a cheap small table
]
EXACT = [(6, 3, (0.1,), 6)]  # tests/fhe/test_simulation.py's exactly rounded lookup: 4 bootstraps a read
ELEMENTS = 64
SIMULATED_DRAWS = 200
CONCRETE_DRAWS = 100


def lookup_step(width: int, lsbs: int, exactness: str) -> TableLookup:
    return TableLookup("lut", ["x"], "y", function=lambda v: v, lsbs_to_remove=lsbs, exactness=exactness,
                       input_bounds=(0, 2**width - 1), sample_shape=(ELEMENTS,))


def tagged(step: TableLookup, x):
    """The lookup traced under its tag, as the integer program traces it: ``LookupNoise`` finds it by it."""
    with fhe.tag(step.tag):
        return step.fhe(x)


def balanced_inputs(width: int, lsbs: int, rows: int, seed: int = 2) -> np.ndarray:
    """``rows`` x 64 accumulator values away from both ends, every residue of the removed bits equally often."""
    unit = 1 << lsbs
    rng = np.random.default_rng(seed)
    n = rows * ELEMENTS
    residues = rng.permutation(np.arange(n) % unit)
    entries = rng.integers(2, 2 ** (width - lsbs) - 3, n)
    return (entries * unit + residues).reshape(rows, ELEMENTS)


def read_entry(decrypted: np.ndarray, unit: int) -> np.ndarray:
    """The entry an identity table read: its output decrypted, to the nearest entry (the output's own
    noise can move it by an accumulator unit on wide tables, which is not a misread)."""
    return np.floor(np.asarray(decrypted) / unit + 0.5).astype(np.int64)


def misread_probability(x: np.ndarray, unit: int, middle: float, sigma: float) -> np.ndarray:
    """P(the read entry is not the rounded-half-up one) when entry ``k`` is read for
    ``x + noise`` in ``[(k - 1) * unit + middle, k * unit + middle)``, noise ~ N(0, sigma) (accumulator units)."""
    correct = np.floor((x + unit / 2) / unit)
    upper = (correct * unit + middle - x) / sigma
    lower = ((correct - 1) * unit + middle - x) / sigma
    return 1.0 - (stats.norm.cdf(upper) - stats.norm.cdf(lower))


def residue_counts(x: np.ndarray, wrong: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    residues = (x % unit).ravel()
    return (np.bincount(residues, weights=wrong.ravel().astype(float), minlength=unit),
            np.bincount(residues, minlength=unit).astype(float))


def log_likelihood(misreads: np.ndarray, reads: np.ndarray, unit: int, middle: float, sigma: float) -> float:
    p = np.clip(misread_probability(np.arange(unit), unit, middle, sigma), 1e-12, 1 - 1e-12)
    return float(np.sum(misreads * np.log(p) + (reads - misreads) * np.log1p(-p)))


def fit(misreads: np.ndarray, reads: np.ndarray, unit: int, start: tuple[float, float]) -> dict:
    """Maximum-likelihood middle and standard deviation (accumulator units), standard errors from the Hessian."""
    def nll(theta):
        return -log_likelihood(misreads, reads, unit, theta[0], np.exp(theta[1]))

    best = optimize.minimize(nll, [start[0], np.log(start[1])], method="Nelder-Mead",
                             options={"xatol": 1e-4, "fatol": 1e-6})
    # numerical Hessian for the standard errors (middle, log sigma)
    h, theta = 1e-3, best.x
    hessian = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            e_i, e_j = np.eye(2)[i] * h, np.eye(2)[j] * h
            hessian[i, j] = (nll(theta + e_i + e_j) - nll(theta + e_i - e_j) - nll(theta - e_i + e_j)
                             + nll(theta - e_i - e_j)) / (4 * h * h)
    cov = np.linalg.inv(hessian)
    sigma = float(np.exp(theta[1]))
    return {"middle": round(float(theta[0]), 3), "middle_se": round(float(np.sqrt(cov[0, 0])), 3),
            "sigma_entries": round(sigma / unit, 4), "sigma_entries_se": round(sigma * np.sqrt(cov[1, 1]) / unit, 4)}


def measure(width: int, lsbs: int, p_error: float, rows: int, keysets: int, exactness: str) -> dict:
    unit = 1 << lsbs
    step = lookup_step(width, lsbs, exactness)
    top = 2**width - unit  # rounds to itself: the identity table's output keeps the width
    inputset = [np.full(ELEMENTS, 0), np.full(ELEMENTS, top),
                *np.random.default_rng(1).integers(0, top + 1, (5, ELEMENTS))]
    circuit = fhe.Compiler(lambda x: tagged(step, x), {"x": "encrypted"}).compile(inputset, p_error=p_error)
    keys = circuit.client.specs.program_info.get_keyset_info().bootstrap_keys()
    bootstraps = 1 if exactness == "approximate" else lsbs + 1  # exact rounding: one more per removed bit
    assert circuit.statistics["programmable_bootstrap_count"] == bootstraps * ELEMENTS
    assert exactness != "approximate" or len(keys) == 1
    N = max(key.polynomial_size() for key in keys)
    x = balanced_inputs(width, lsbs, rows)
    expected = step.numpy(x)
    log(f"W={width} lsbs={lsbs} {exactness} p_error={p_error}: N={N}, {keysets} key sets of {x.size} reads")

    per_keyset, misreads, reads, off_by, output_errors = [], np.zeros(unit), np.zeros(unit), {}, 0
    first = None
    for k in range(1, keysets + 1):
        start = time.perf_counter()
        circuit.keygen(force=True, seed=k, encryption_seed=k)
        keygen_s = time.perf_counter() - start
        start = time.perf_counter()
        encrypted = np.stack([circuit.encrypt_run_decrypt(row) for row in x])
        run_s = time.perf_counter() - start
        first = encrypted if first is None else first
        wrong = read_entry(encrypted, unit) != expected // unit
        m, n = residue_counts(x, wrong, unit)
        misreads, reads = misreads + m, reads + n
        for d in (read_entry(encrypted, unit) - expected // unit)[wrong].tolist():
            off_by[str(d)] = off_by.get(str(d), 0) + 1
        output_errors += int(np.sum(encrypted % unit != 0))
        per_keyset.append({"rate": round(float(wrong.mean()), 4), "keygen_s": round(keygen_s, 2),
                           "run_ms_per_read": round(1000 * run_s / x.size, 2)})
        log(f"  key set {k}: {wrong.mean():.4f} ({run_s:.1f} s)")

    # the seeds fix the secret keys and the masks, not the noise (concrete-cpu draws it from the OS)
    circuit.keygen(force=True, seed=1, encryption_seed=1)
    seeded_again = np.stack([circuit.encrypt_run_decrypt(row) for row in x])
    rates = np.array([s["rate"] for s in per_keyset])
    pooled = misreads.sum() / reads.sum()
    # for fixed inputs a key set's count varies by sum p_i (1 - p_i), p_i per residue
    p_residue = misreads / reads
    count_var = float(np.sum(reads / keysets * p_residue * (1 - p_residue)))
    n_reads = x.size
    chi2 = float(np.sum((rates * n_reads - pooled * n_reads) ** 2) / count_var)

    tiled = np.tile(x, (SIMULATED_DRAWS, 1))
    noise = LookupNoise.from_circuit(circuit, seed=0)
    ours = noise(step, tiled) != step.rounded(tiled)
    ours_m, ours_n = residue_counts(tiled, ours, unit)
    tiled = np.tile(x, (CONCRETE_DRAWS, 1))
    theirs = read_entry(np.stack([circuit.simulate(row) for row in tiled]), unit) != step.numpy(tiled) // unit
    theirs_m, theirs_n = residue_counts(tiled, theirs, unit)

    results = {
        "accumulator_bits": width, "lsbs_removed": lsbs, "exactness": exactness, "p_error": circuit.p_error,
        "polynomial_size": N, "reads_per_keyset": n_reads,
        "encrypted": {
            "per_keyset": per_keyset,
            "rate": round(float(pooled), 4),
            "rate_se": round(float(np.sqrt(pooled * (1 - pooled) / reads.sum())), 4),
            "keyset_rate_std": round(float(rates.std(ddof=1)), 4),
            "keyset_rate_std_from_sampling": round(float(np.sqrt(count_var) / n_reads), 4),
            "keyset_chi2": round(chi2, 2), "keyset_chi2_p_value": round(float(stats.chi2.sf(chi2, keysets - 1)), 3),
            "off_by_entries": off_by,
            "outputs_off_the_entries": output_errors,
            "per_residue": np.round(p_residue, 3).tolist(),
            "key_set_1_again_same_outputs": bool(np.array_equal(first, seeded_again)),
            "key_set_1_again_rate": round(float(np.mean(read_entry(seeded_again, unit) != expected // unit)), 4),
        },
        "ours": {"rate": round(float(ours.mean()), 4), "per_residue": np.round(ours_m / ours_n, 3).tolist(),
                 "middle_shift": noise.middle_shifts.get(step.tag, 0.0)},
        "concrete": {"rate": round(float(theirs.mean()), 4),
                     "per_residue": np.round(theirs_m / theirs_n, 3).tolist()},
    }
    if exactness != "approximate":
        return results
    sigma = unit * 0.5 / stats.norm.ppf(1 - circuit.p_error / 2)
    middles = {"old (unit/2 - 0.5)": unit / 2 - 0.5, "concrete's encoding": unit / 2 - 0.5 - 2 ** (width - 1) / N}
    residues = np.arange(unit)
    model = {name: {"middle": middle,
                    "rate": round(float(np.mean(misread_probability(residues, unit, middle, sigma))), 4),
                    "log_likelihood_encrypted": round(log_likelihood(misreads, reads, unit, middle, sigma), 2)}
             for name, middle in middles.items()}
    return {
        **results,
        "model": {"sigma_entries": round(sigma / unit, 4), **model},
        "fit": {"encrypted": fit(misreads, reads, unit, (unit / 2 - 0.5, sigma)),
                "ours": fit(ours_m, ours_n, unit, (unit / 2 - 0.5, sigma)),
                "concrete": fit(theirs_m, theirs_n, unit, (unit / 2 - 0.5, sigma))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keysets", type=int, default=10)
    parser.add_argument("--rows-scale", type=float, default=1.0, help="scale the rows per key set (smoke runs)")
    parser.add_argument("--rounding", choices=["approximate", "exact"], default="approximate")
    args = parser.parse_args()
    start = time.perf_counter()
    results = [measure(width, lsbs, p, max(1, round(rows * args.rows_scale)), args.keysets, args.rounding)
               for width, lsbs, p_errors, rows in (APPROXIMATE if args.rounding == "approximate" else EXACT)
               for p in p_errors]
    json.dump({"machine": machine(), "keysets": args.keysets, "lookups": results,
               "total_s": round(time.perf_counter() - start)}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
