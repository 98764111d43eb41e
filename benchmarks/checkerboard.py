"""The specification's checkerboard tables (pages 001/002), measured with fheestimators.

Tables, each the mean over ``--seeds`` runs (data noise, split and weights change with the seed):

a. ``SimpleNet`` with 10/30/100 hidden neurons trained in float, quantized after training
   to 3 bits (``compile_torch_model(..., n_bits=3)``): fp32 and 3-bit accuracy, accumulator size;
b. ``PrunedSimpleNet``, 100 neurons pruned to 10 and 30 non-zero inputs per neuron: the same;
c. QAT with pruning (100 neurons, 30 non-zero, 3 bits): page 002's ``QATPrunedSimpleNet``
   and page 001's ``QuantSimpleNet``: Brevitas accuracy, accuracy after
   ``compile_brevitas_qat_model``, accumulator size;

plus, for every row, on one seed: FHE compile time, key generation, encrypted execution
per sample (and whether it equals the simulation), programmable bootstraps, max bit-width,
evaluation-key size and simulation time; the throughput of one encrypted call on many
samples with the CPU use; and ``NeuralNetClassifier()`` defaults with the same figures and
the Bayes ceiling of the data.

Run: ``python benchmarks/checkerboard.py --quick`` (smoke run, about 2 minutes) or
``python benchmarks/checkerboard.py --markdown results.md --plot boundary.png > results.json``.
JSON goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    benchmark_estimator,
    circuit_costs,
    log,
    machine,
    measure_fhe,
    stopwatch,
    time_simulate,
)
from _networks import (  # noqa: E402
    N_BITS,
    PrunedSimpleNet,
    QATPrunedSimpleNet,
    QuantSimpleNet,
    SimpleNet,
    logits,
    non_zero_per_neuron,
    train,
)

from fheestimators import (  # noqa: E402
    build_quantized_module,
    compile_brevitas_qat_model,
    compile_torch_model,
    make_checkerboard,
)
from fheestimators.datasets import board_rule_accuracy  # noqa: E402


@dataclass(frozen=True)
class Row:
    key: str
    table: str  # "a", "b" or "c"
    label: str
    make: Callable[[], torch.nn.Module]
    qat: bool = False
    max_non_zero: Optional[int] = None
    spec: Optional[dict] = None  # the page's figures for this row
    inputs: str = "x"  # a key of INPUTS: what the network sees of the board's [0, 1]^2 points
    rounding: object = "default"  # rounding_threshold_bits of the compile call ("default": not given)


INPUTS = {
    "x": lambda X: X,
    # page 001's QuantSimpleNet barely trains on [0, 1] inputs (its learned quantizers and
    # uniform(-1, 1) weights saturate the 3-bit ReLUs): it gets the board centred on 0
    "2x-1": lambda X: (2 * np.asarray(X, dtype=np.float32) - 1).astype(np.float32),
}


ROWS = [
    Row("simplenet-10", "a", "SimpleNet(10)", lambda: SimpleNet(10),
        spec={"torch_accuracy": 0.6870, "quantized_accuracy": 0.5644, "accumulator_bits": 6.6}),
    Row("simplenet-30", "a", "SimpleNet(30)", lambda: SimpleNet(30),
        spec={"torch_accuracy": 0.8332, "quantized_accuracy": 0.5554, "accumulator_bits": 6.9}),
    Row("simplenet-100", "a", "SimpleNet(100)", lambda: SimpleNet(100),
        spec={"torch_accuracy": 0.8806, "quantized_accuracy": 0.5650, "accumulator_bits": 7.4}),
    Row("pruned-10", "b", "PrunedSimpleNet(100), 10 non-zero", lambda: PrunedSimpleNet(100), max_non_zero=10,
        spec={"torch_accuracy": 0.8250, "quantized_accuracy": 0.5774, "accumulator_bits": 6.6}),
    Row("pruned-30", "b", "PrunedSimpleNet(100), 30 non-zero", lambda: PrunedSimpleNet(100), max_non_zero=30,
        spec={"torch_accuracy": 0.8806, "quantized_accuracy": 0.5782, "accumulator_bits": 6.8}),
    Row("qat-pruned-30", "c", "QATPrunedSimpleNet(100), 30 non-zero (page 002), our defaults: rounding auto (exact)",
        lambda: QATPrunedSimpleNet(100), qat=True, max_non_zero=30,
        spec={"torch_accuracy": 0.944, "quantized_accuracy": 0.918, "accumulator_bits": 7}),
    Row("qat-pruned-30-auto", "c", "QATPrunedSimpleNet(100), 30 non-zero, rounding auto (approximate)",
        lambda: QATPrunedSimpleNet(100), qat=True, max_non_zero=30, rounding={"n_bits": "auto"},
        spec={"torch_accuracy": 0.944, "quantized_accuracy": 0.918, "accumulator_bits": 7}),
    Row("qat-pruned-30-unrounded", "c",
        "QATPrunedSimpleNet(100), 30 non-zero, no rounding (the specification's default)",
        lambda: QATPrunedSimpleNet(100), qat=True, max_non_zero=30, rounding=None,
        spec={"torch_accuracy": 0.944, "quantized_accuracy": 0.918, "accumulator_bits": 7}),
    Row("quant-simple-30", "c", "QuantSimpleNet(100), 30 non-zero (page 001)", lambda: QuantSimpleNet(100),
        qat=True, max_non_zero=30, inputs="2x-1",
        spec={"torch_accuracy": 0.954, "quantized_accuracy": 0.954, "accumulator_bits": 7}),
]
ROW_KEYS = [row.key for row in ROWS] + ["estimator"]

FULL = dict(seeds=10, epochs=20, qat_epochs=20, fhe_samples=3, fhe_rows="all", throughput_samples=100,
            throughput_rows="qat-pruned-30,qat-pruned-30-auto,estimator", throughput_budget=150.0, estimator_seeds=10,
            estimator_epochs=None)
QUICK = dict(seeds=1, epochs=4, qat_epochs=4, fhe_samples=1, fhe_rows="simplenet-10,estimator",
             throughput_samples=2, throughput_rows="estimator", throughput_budget=15.0, estimator_seeds=1,
             estimator_epochs=5)


def short_error(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 400 else text[:397] + "..."


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(outputs).argmax(axis=1) == y).mean())


def quantize(row: Row, model: torch.nn.Module, X_calibration: np.ndarray,
             p_error: Optional[float] = None) -> tuple[object, dict]:
    """Import (and compile) the trained model; on a compile error, keep the clear module and the message."""
    options = {} if row.rounding == "default" else {"rounding_threshold_bits": row.rounding}
    if row.qat:
        def compile_model(m, x):
            return compile_brevitas_qat_model(m, x, p_error=p_error, **options)
    else:
        def compile_model(m, x):
            return compile_torch_model(m, x, n_bits=N_BITS, p_error=p_error, **options)
    record: dict = {}
    with stopwatch() as t:
        try:
            module = compile_model(model, X_calibration)
        except Exception as error:  # too wide for FHE, most likely: report it, keep measuring
            record["compile_error"] = short_error(error)
            module = None
    if module is not None:
        record["compile_s"] = round(t.wall, 2)
        return module, record
    try:
        module = build_quantized_module(model, X_calibration, **({} if row.qat else {"n_bits": N_BITS}))
    except Exception as error:
        record["build_error"] = short_error(error)
        module = None
    return module, record


def max_bit_width(module) -> int:
    width = module.max_bit_width  # a property here; tolerate a method
    return int(width() if callable(width) else width)


def run_row(row: Row, seed: int, data: tuple, args, measure_encrypted: bool, throughput: bool):
    """Train, import and measure one row on one seed; returns (record, model, module)."""
    X_train, X_test, y_train, y_test = data
    X_train, X_test = INPUTS[row.inputs](X_train), INPUTS[row.inputs](X_test)
    torch.manual_seed(seed)
    model = row.make()
    with stopwatch() as t:
        train(model, X_train, y_train, epochs=args.qat_epochs if row.qat else args.epochs, lr=args.lr,
              batch_size=args.batch_size, max_non_zero=row.max_non_zero, seed=seed)
    record = {"seed": seed, "train_s": round(t.wall, 2), "torch_accuracy": accuracy(logits(model, X_test), y_test)}
    if row.max_non_zero is not None:
        record["non_zero_per_neuron_fc2"] = round(non_zero_per_neuron(model)["fc2"], 2)
    module, compile_record = quantize(row, model, X_train[: args.compile_samples], args.p_error)
    record.update(compile_record)
    if module is None:
        return record, model, None
    record["quantized_accuracy"] = accuracy(module.forward(X_test, fhe="disable"), y_test)
    record["accumulator_bits"] = max_bit_width(module)
    record["lookup_accumulator_bits"] = max((r.accumulator_bits for r in module.layer_reports()), default=0)
    record["table_lookups"] = sum(r.table_lookups for r in module.layer_reports())
    if module.fhe_circuit is None:
        return record, model, module
    run = lambda X, fhe: module.forward(X, fhe=fhe)  # noqa: E731
    simulated, simulate_s = time_simulate(run, X_test)
    record["simulate_accuracy"] = accuracy(simulated, y_test)
    record["simulate_s_500"] = round(simulate_s, 4)
    record.update(circuit_costs(module.fhe_circuit))
    if measure_encrypted:
        log(f"  {row.key}: keygen and {args.fhe_samples} encrypted sample(s), "
            f"{record['programmable_bootstraps']} PBS at up to {record['max_bit_width']} bits")
        record.update(measure_fhe(module.fhe_circuit, run, X_test, simulated, args.fhe_samples,
                                  args.throughput_samples if throughput else 0, args.throughput_budget))
    return record, model, module


def page_002_as_written(model: torch.nn.Module, data: tuple, args) -> dict:
    """Page 002 gives fc3 ``n_hidden``-bit weights: load the trained weights into that version and try it."""
    X_train, X_test, _, y_test = data
    as_written = QATPrunedSimpleNet(100, output_bit_width=None)
    as_written.load_state_dict(model.state_dict())
    result = {"fc3_weight_bits": 100, "brevitas_accuracy": accuracy(logits(as_written, X_test), y_test)}
    try:
        module = compile_brevitas_qat_model(as_written, X_train[: args.compile_samples], p_error=args.p_error)
        result["simulate_accuracy"] = accuracy(module.forward(X_test, fhe="simulate"), y_test)
        result.update(circuit_costs(module.fhe_circuit))
    except Exception as error:
        result["compile_error"] = short_error(error)
    return result


def summarize(records: list[dict]) -> dict:
    """Mean (and std for accuracies) over the seeds of every numeric field that all seeds have.

    Fields of the FHE seed alone (keygen, execution) stay in that seed's record.
    """
    summary: dict = {"n_seeds": len(records)}
    for key in dict.fromkeys(k for r in records for k in r if k != "seed"):
        values = [r.get(key) for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            summary[key] = float(f"{np.mean(values):.4g}")
            if key.endswith("accuracy") and len(values) > 1:
                summary[key + "_std"] = float(f"{np.std(values):.4g}")
    summary["compile_failures"] = sum("compile_error" in r for r in records)
    errors = [r["compile_error"] for r in records if "compile_error" in r]
    if errors:
        summary["compile_error"] = errors[0]
    return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few epochs, cheap FHE rows only")
    parser.add_argument("--seeds", type=int, help="runs averaged per table (default 10; quick 1)")
    parser.add_argument("--fhe-seed", type=int, default=0, help="the seed whose models get keygen/execute")
    parser.add_argument("--fhe-samples", type=int, help="samples run encrypted for the latency (default 3)")
    parser.add_argument("--fhe-rows", help=f"comma list among {','.join(ROW_KEYS)} or 'all' or 'none': "
                                           "rows with keygen/execute (default all; quick simplenet-10,estimator)")
    parser.add_argument("--throughput-samples", type=int,
                        help="samples of one encrypted call for the throughput (default 100; quick 2)")
    parser.add_argument("--throughput-rows", help="rows with a throughput measurement "
                                                  "(default qat-pruned-30,estimator; quick estimator)")
    parser.add_argument("--throughput-budget", type=float,
                        help="fewer throughput samples if the call would last longer than this (s; default 150)")
    parser.add_argument("--rows", default="all", help="rows to run (comma list or 'all')")
    parser.add_argument("--epochs", type=int, help="epochs of the float networks (default 20; quick 4)")
    parser.add_argument("--qat-epochs", type=int, help="epochs of the Brevitas networks (default 20; quick 4)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile-samples", type=int, default=2000,
                        help="training points used as calibration/compilation inputset (the estimator's bound)")
    parser.add_argument("--estimator-seeds", type=int, help="seeds for NeuralNetClassifier fits (default 10; quick 1)")
    parser.add_argument("--estimator-epochs", type=int,
                        help="override NeuralNetClassifier max_epochs (default: its own; quick 5)")
    parser.add_argument("--p-error", type=float,
                        help="error probability of one bootstrap, for every compilation and the estimator "
                             "(default: the package's)")
    parser.add_argument("--torch-threads", type=int, default=1, help="tiny networks train fastest on one thread")
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown here")
    parser.add_argument("--plot", type=Path, help="draw decision boundaries (needs matplotlib: the 'plot' extra)")
    args = parser.parse_args(argv)
    for name, default in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, default)

    def keys(text):
        chosen = (ROW_KEYS if text == "all" else [] if text == "none"
                  else [k.strip() for k in text.split(",") if k.strip()])
        unknown = set(chosen) - set(ROW_KEYS)
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; choose among {ROW_KEYS}")
        return set(chosen)

    args.rows, args.fhe_rows, args.throughput_rows = keys(args.rows), keys(args.fhe_rows), keys(args.throughput_rows)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    seeds = list(range(args.seeds))
    fhe_seed = args.fhe_seed if args.fhe_seed in seeds else seeds[0]
    results: dict = {
        "config": {"quick": args.quick, "seeds": seeds, "fhe_seed": fhe_seed, "n_bits": N_BITS,
                   "epochs": args.epochs, "qat_epochs": args.qat_epochs, "lr": args.lr, "optimizer": "Adam",
                   "batch_size": args.batch_size, "compile_samples": args.compile_samples, "p_error": args.p_error,
                   "fhe_samples": args.fhe_samples, "throughput_samples": args.throughput_samples,
                   "throughput_budget_s": args.throughput_budget},
        "machine_start": machine(),
    }
    rows = [row for row in ROWS if row.key in args.rows]
    per_seed: dict[str, list] = {row.key: [] for row in rows}
    kept: dict = {}  # the FHE seed's models, for the plot
    bayes = []
    for seed in seeds:
        data = make_checkerboard(random_state=seed)
        bayes.append(board_rule_accuracy(data[1], data[3]))
        for row in rows:
            encrypted = seed == fhe_seed and row.key in args.fhe_rows
            record, model, module = run_row(row, seed, data, args, encrypted,
                                            throughput=row.key in args.throughput_rows)
            per_seed[row.key].append(record)
            log(f"seed {seed} {row.key}: torch {record['torch_accuracy']:.3f}, 3-bit "
                f"{record.get('quantized_accuracy', float('nan')):.3f}, accumulator "
                f"{record.get('accumulator_bits', '-')} bits" +
                (f", compile error: {record['compile_error'][:120]}" if "compile_error" in record else ""))
            if seed == fhe_seed:
                kept[row.key] = (model, module, data, INPUTS[row.inputs])
                if row.key == "qat-pruned-30":
                    record["page_as_written"] = page_002_as_written(model, data, args)
    results["bayes_accuracy"] = round(float(np.mean(bayes)), 4)
    results["rows"] = {}
    for row in rows:
        records = per_seed[row.key]
        fhe_record = next(r for r in records if r["seed"] == fhe_seed)
        accuracy_fields = {k: v for k, v in summarize(records).items()}
        results["rows"][row.key] = {"table": row.table, "label": row.label, "qat": row.qat,
                                    "max_non_zero": row.max_non_zero, "inputs": row.inputs, "mean": accuracy_fields,
                                    "accumulator_bits_per_seed": [r.get("accumulator_bits") for r in records],
                                    "fhe_seed": fhe_record, "spec": row.spec}
    if "estimator" in args.rows:
        results["estimator"] = run_estimators(args, seeds, fhe_seed, kept)
    results["machine_end"] = machine()
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(to_markdown(results))
        log(f"markdown written to {args.markdown}")
    if args.plot:
        plot_boundaries(args.plot, kept)
        log(f"plot written to {args.plot}")
    return results


def run_estimators(args, seeds, fhe_seed, kept) -> dict:
    """``NeuralNetClassifier()`` defaults in a pipeline with ``StandardScaler``, on the first seeds."""
    estimator_seeds = seeds[: max(1, args.estimator_seeds)]
    encrypted_seed = fhe_seed if fhe_seed in estimator_seeds else estimator_seeds[0]
    params = {} if args.estimator_epochs is None else {"max_epochs": args.estimator_epochs}
    if args.p_error is not None:
        params["p_error"] = args.p_error
    records = []
    for seed in estimator_seeds:
        encrypted = seed == encrypted_seed and "estimator" in args.fhe_rows
        if encrypted:
            log(f"seed {seed} estimator: fit, then keygen and {args.fhe_samples} encrypted sample(s)")
        record, model, data = benchmark_estimator(
            seed=seed, measure_encrypted=encrypted, fhe_samples=args.fhe_samples,
            throughput_samples=args.throughput_samples if "estimator" in args.throughput_rows else 0,
            throughput_budget_s=args.throughput_budget, estimator_params=params)
        records.append(record)
        log(f"seed {seed} estimator: fit {record['fit_s']} s, brevitas {record['brevitas_accuracy']:.3f}, "
            f"simulate {record['simulate_accuracy']:.3f}, Bayes {record['bayes_accuracy']:.3f}")
        if seed == encrypted_seed:
            kept["estimator"] = (model, None, data, INPUTS["x"])
    return {"params": params or "defaults", "mean": summarize(records),
            "fhe_seed": next(r for r in records if r["seed"] == encrypted_seed)}


# -- markdown ----------------------------------------------------------------------------------
def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def num(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def spec_table(rows: list[dict], column_title: str, columns: list[str], qat: bool) -> str:
    torch_name, quant_name = ("3-bit accuracy Brevitas", "3-bit accuracy in fheestimators") if qat else (
        "fp32 accuracy", "3-bit accuracy")
    lines = [
        [torch_name] + [pct(r["mean"].get("torch_accuracy")) for r in rows],
        [quant_name] + [pct(r["mean"].get("quantized_accuracy")) for r in rows],
        [quant_name + " (simulate)"] + [pct(r["mean"].get("simulate_accuracy")) for r in rows],
        ["mean accumulator size"] + [num(r["mean"].get("accumulator_bits"), 1) for r in rows],
        ["compile failures"] + [f"{r['mean']['compile_failures']}/{r['mean']['n_seeds']}" for r in rows],
        [f"spec: {torch_name}"] + [pct(r["spec"]["torch_accuracy"]) for r in rows],
        [f"spec: {quant_name}"] + [pct(r["spec"]["quantized_accuracy"]) for r in rows],
        ["spec: accumulator size"] + [num(r["spec"]["accumulator_bits"], 1) for r in rows],
    ]
    return table([column_title] + columns, lines)


FHE_COLUMNS = [  # title, key, decimals
    ("compile s", "compile_s", 2), ("keygen s", "keygen_s", 2), ("eval keys MB", "evaluation_keys_mb", 1),
    ("PBS", "programmable_bootstraps", 0), ("max bit-width", "max_bit_width", 0),
    ("execute s/sample", "execute_s_per_sample", 2), ("execute = simulate", "execute_equals_simulate", 0),
    ("simulate s (500)", "simulate_s_500", 4),
]


def to_markdown(results: dict) -> str:
    config, rows = results["config"], results["rows"]
    n = len(config["seeds"])
    parts = [
        "# Checkerboard benchmark",
        f"Mean over {n} seed(s) (data noise, split and initial weights change with the seed); "
        f"float networks {config['epochs']} epochs, Brevitas networks {config['qat_epochs']} epochs, "
        f"Adam lr {config['lr']}, batch {config['batch_size']}; {config['n_bits']}-bit quantization "
        f"calibrated and compiled on {config['compile_samples']} training points"
        f"{'' if config.get('p_error') is None else ' with p_error ' + format(config['p_error'], '.3g')}. "
        f"FHE costs on seed {config['fhe_seed']}. Bayes ceiling of the test split: {pct(results['bayes_accuracy'])}. "
        f"Machine: {results['machine_start']['cpu_count']} cores, load average "
        f"{results['machine_start']['load_average_1min']} at start, {results['machine_end']['load_average_1min']} "
        f"at end; runtime {results['runtime_s'] / 60:.1f} min.",
    ]
    groups = [("a", "a. SimpleNet, post-training quantization to 3 bits", "neurons", lambda r: r["label"][10:-1]),
              ("b", "b. PrunedSimpleNet (100 neurons), 3-bit PTQ", "non-zero neurons",
               lambda r: str(r["max_non_zero"])),
              ("c", "c. QAT with pruning (100 neurons, 3 bits)", "network",
               lambda r: r["label"].replace(", 30 non-zero", ""))]
    for letter, title, column_title, name in groups:
        chosen = [r for r in rows.values() if r["table"] == letter]
        if chosen:
            parts += [f"## {title}", spec_table(chosen, column_title, [name(r) for r in chosen], qat=letter == "c")]
            centred = [r["label"].split(",")[0] for r in chosen if r.get("inputs", "x") != "x"]
            if centred:
                parts.append(f"{', '.join(centred)}: inputs mapped to [-1, 1] (2x - 1); the others see the "
                             "board's [0, 1] coordinates.")
    written = rows.get("qat-pruned-30", {}).get("fhe_seed", {}).get("page_as_written")
    if written:
        outcome = written.get("compile_error") or f"compiles, max bit-width {written.get('max_bit_width')}"
        parts.append(f"Page 002 as written gives fc3 {written['fc3_weight_bits']}-bit weights; the rows above use "
                     f"3 bits. With the trained weights loaded into the page's version: Brevitas accuracy "
                     f"{pct(written['brevitas_accuracy'])}; import: {outcome}")
    fhe_lines, throughput_lines = [], []
    labelled = [(r["label"], r["fhe_seed"]) for r in rows.values()]
    if "estimator" in results:
        params = results["estimator"]["params"]
        name = "NeuralNetClassifier() defaults" if params == "defaults" else (
            "NeuralNetClassifier(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")")
        labelled.append((name, results["estimator"]["fhe_seed"]))
    for label, record in labelled:
        cells = [num(record.get(key), digits) for _, key, digits in FHE_COLUMNS]
        if record.get("execute_equals_simulate") is False:
            agree = round(record["execute_prediction_agreement"] * record["execute_samples"])
            cells[[key for _, key, _ in FHE_COLUMNS].index("execute_equals_simulate")] = (
                f"**no** ({agree}/{record['execute_samples']} predictions agree)")
        error = record.get("compile_error", "")
        fhe_lines.append([label] + cells + [error.replace("|", "/")])
        if "throughput_samples" in record:
            agree = round(record["throughput_prediction_agreement"] * record["throughput_samples"])
            throughput_lines.append([label, record["throughput_samples"], f"{agree}/{record['throughput_samples']}",
                                     num(record["throughput_samples_per_s"], 3),
                                     num(record["one_sample_latency_s"]), num(record["throughput_cpu_usage"]),
                                     num(record.get("execute_cpu_usage")), num(record.get("keygen_cpu_usage"))])
    parts += [f"## FHE costs (seed {config['fhe_seed']}; '-' where not measured)",
              table(["model"] + [title for title, _, _ in FHE_COLUMNS] + ["compile error"], fhe_lines)]
    if throughput_lines:
        parts += ["## Throughput of one encrypted call on k samples",
                  "CPU usage is CPU seconds per wall second of this process: 1.0 means one core, "
                  "2.0 both cores (other processes on the machine lower it).",
                  table(["model", "k", "predictions = simulate", "samples/s", "one-sample latency s",
                         "CPU usage (throughput)", "CPU usage (execute)", "CPU usage (keygen)"], throughput_lines)]
    if "estimator" in results:
        est = results["estimator"]
        mean = est["mean"]
        parts += [f"## NeuralNetClassifier ({est['params']}), StandardScaler pipeline, "
                  f"mean over {mean['n_seeds']} seed(s)",
                  table(["metric", "value"], [
                      ["Bayes ceiling (exact rule on the noisy test points)", pct(mean.get("bayes_accuracy"))],
                      ["Brevitas accuracy", pct(mean.get("brevitas_accuracy"))],
                      ["clear quantized accuracy", pct(mean.get("disable_accuracy"))],
                      ["simulate accuracy", pct(mean.get("simulate_accuracy"))],
                      ["Bayes ceiling on 50,000 fresh points of the board", pct(mean.get("fresh_bayes_accuracy"))],
                      ["Brevitas accuracy on the fresh points", pct(mean.get("fresh_brevitas_accuracy"))],
                      ["clear quantized accuracy on the fresh points", pct(mean.get("fresh_disable_accuracy"))],
                      ["simulate accuracy on the fresh points", pct(mean.get("fresh_simulate_accuracy"))],
                      ["fit s (includes compile)", num(mean.get("fit_s"))],
                      ["accumulator size (clear program)", num(mean.get("accumulator_bits"), 1)],
                  ])]
    return "\n\n".join(parts) + "\n"


# -- plot --------------------------------------------------------------------------------------
def plot_boundaries(path: Path, kept: dict) -> None:
    """Rows: models of the FHE seed; columns: test data, torch/Brevitas model, FHE simulation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for key, title in (("simplenet-100", "SimpleNet(100), 3-bit PTQ"),
                       ("pruned-30", "PrunedSimpleNet, 30 non-zero, PTQ"),
                       ("qat-pruned-30", "QATPrunedSimpleNet, QAT"),
                       ("estimator", "NeuralNetClassifier()")):
        if key in kept and (kept[key][1] is not None or key == "estimator"):
            panels.append((key, title, *kept[key]))
    if not panels:
        log("nothing to plot: no kept model")
        return
    side = np.linspace(-0.1, 1.1, 241, dtype=np.float32)
    gx, gy = np.meshgrid(side, side)
    grid = np.c_[gx.ravel(), gy.ravel()].astype(np.float32)
    fig, axes = plt.subplots(len(panels), 3, figsize=(12, 4 * len(panels)), squeeze=False)
    for axes_row, (key, title, model, module, data, transform) in zip(axes, panels):
        _, X_test, _, y_test = data
        if key == "estimator":
            scaler, clf = model[0], model[-1]

            def float_predict(X):
                with torch.no_grad():
                    out = clf.module_(torch.from_numpy(scaler.transform(X).astype(np.float32)))
                return out.argmax(1).numpy()

            def fhe_predict(X):
                return clf.label_encoder_.transform(model.predict(X, fhe="simulate"))

            float_name = "Brevitas (torch)"
        else:
            def float_predict(X, model=model, transform=transform):
                return logits(model, transform(X)).argmax(1)

            def fhe_predict(X, module=module, transform=transform):
                return module.forward(transform(X), fhe="simulate").argmax(1)

            float_name = "Brevitas (torch)" if "qat" in key else "fp32 torch"
        for ax, name, predict in ((axes_row[1], float_name, float_predict),
                                  (axes_row[2], "FHE (simulate)", fhe_predict)):
            ax.pcolormesh(gx, gy, predict(grid).reshape(gx.shape), cmap="coolwarm", alpha=0.35, shading="auto")
            test_accuracy = float((predict(X_test) == y_test).mean())
            ax.set_title(f"{title}\n{name}: test accuracy {100 * test_accuracy:.1f}%")
        axes_row[0].set_title(f"{title}\ntest data (500 points)")
        for ax in axes_row:
            ax.scatter(X_test[:, 0], X_test[:, 1], c=y_test, cmap="coolwarm", s=6, edgecolors="none")
            ax.set_xlim(-0.1, 1.1)
            ax.set_ylim(-0.1, 1.1)
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
