"""Shared measurements of the checkerboard benchmarks: FHE costs, timings, CPU use, the estimator.

Every function returns plain JSON-able dicts with the key names of
``estimator_checkerboard.py`` (``compile_s``, ``keygen_s``, ``execute_s_per_sample``, ...).
"""
from __future__ import annotations

import os
import statistics
import resource
import sys
import time
from contextlib import contextmanager
from typing import Callable, Optional

import numpy as np
import torch

from fheestimators.datasets import board_rule_accuracy, fresh_board_points

MB = 2**20


@contextmanager
def stopwatch():
    """``with stopwatch() as t: ...`` then ``t.wall`` (s) and ``t.cpu`` (user+sys CPU s, all threads)."""

    class Times:
        wall = cpu = 0.0

    times = Times()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    try:
        yield times
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        times.wall = time.perf_counter() - wall0
        times.cpu = usage.ru_utime + usage.ru_stime - cpu0


def log(message: str) -> None:
    """Progress on stderr, time-stamped: stdout carries the JSON only."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_execute_s(module, X: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one-sample encrypted runs."""
    module.forward(X[:1], fhe="execute")  # the first run after key generation pays one-off set-up
    wall, cpu = [], []
    for i in range(1, repeats + 1):
        with stopwatch() as t:
            module.forward(X[i : i + 1], fhe="execute")
        wall.append(t.wall)
        cpu.append(t.cpu)
    return statistics.median(wall), statistics.median(cpu)


def cpu_usage(times) -> float:
    """CPU seconds per wall second: about 1 when one core works, about 2 when both do."""
    return round(times.cpu / times.wall, 2) if times.wall > 0 else 0.0


def machine() -> dict:
    """Cores and load: other processes on the machine slow every timing down."""
    return {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads()}


def standardized_checkerboard() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The demo's checkerboard split, standardized as its pipeline does, in float32.

    A model fitted on these rows can be deployed on its own: its clients send the same rows.
    """
    from sklearn.preprocessing import StandardScaler

    from fheestimators import make_checkerboard

    X_train, X_test, y_train, y_test = make_checkerboard()
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train).astype(np.float32), scaler.transform(X_test).astype(np.float32), y_train, y_test


def brevitas_predict(pipeline, X: np.ndarray) -> np.ndarray:
    """Labels from the fitted pipeline's Brevitas network run in torch (no integer program, no FHE)."""
    clf = pipeline[-1]
    with torch.no_grad():
        out = clf.module_(torch.from_numpy(pipeline[0].transform(X).astype(np.float32)))
    return clf.classes_[out.argmax(1).numpy()]


def circuit_costs(circuit) -> dict:
    """What the compiled circuit costs, known without running it."""
    return {
        "programmable_bootstraps": int(circuit.programmable_bootstrap_count),
        "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        "evaluation_keys_mb": round((circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys) / MB, 1),
        "p_error": float(circuit.p_error),
        "global_p_error": float(circuit.global_p_error),
    }


def measure_keygen(circuit) -> dict:
    """Key generation alone, forced (keys already in the circuit are generated again)."""
    with stopwatch() as t:
        circuit.keygen(force=True)
    return {"keygen_s": round(t.wall, 2), "keygen_cpu_usage": cpu_usage(t)}


def same_outputs(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    """(outputs exactly equal, fraction of samples with the same predicted class).

    Labels compare as labels, logits exactly and by their argmax.
    """
    a, b = np.asarray(a), np.asarray(b)
    exact = bool(np.array_equal(a, b))
    if a.ndim == 2:
        a, b = a.argmax(axis=1), b.argmax(axis=1)
    return exact, round(float((a == b).mean()), 4)


def measure_execute(run: Callable[[np.ndarray, str], np.ndarray], X: np.ndarray, simulated: np.ndarray,
                    n_samples: int) -> dict:
    """Encrypted runs of ``n_samples`` points, one call per point: the one-sample latency.

    ``run(X, fhe)`` returns logits (a module's ``forward``) or labels (``predict``);
    ``simulated`` is ``run(X, "simulate")`` on the same points. Points go one by one so
    that a batch run in parallel threads does not pass for a shorter latency.
    """
    n = max(1, min(n_samples, len(X)))
    executed, wall, cpu = [], 0.0, 0.0
    for i in range(n):
        with stopwatch() as t:
            executed.append(run(X[i : i + 1], "execute"))
        wall, cpu = wall + t.wall, cpu + t.cpu
    exact, agreement = same_outputs(np.concatenate(executed), simulated[:n])
    return {"execute_samples": n, "execute_s_per_sample": round(wall / n, 2),
            "execute_cpu_usage": round(cpu / wall, 2) if wall else 0.0, "execute_equals_simulate": exact,
            "execute_prediction_agreement": agreement}


def measure_throughput(run: Callable[[np.ndarray, str], np.ndarray], X: np.ndarray, simulated: np.ndarray,
                       n_samples: int, budget_s: float, latency_s: Optional[float]) -> dict:
    """One encrypted call on ``k`` samples: samples per second and CPU use beside the latency.

    ``k`` is ``n_samples``, lowered so that the call should last about ``budget_s`` given
    the one-sample ``latency_s`` already measured and one sample at a time per core (at
    least 2 samples).
    """
    k = min(n_samples, len(X))
    if latency_s:
        k = min(k, max(2, int(budget_s * (os.cpu_count() or 1) // latency_s)))
    with stopwatch() as t:
        executed = run(X[:k], "execute")
    exact, agreement = same_outputs(executed, simulated[:k])
    return {"throughput_samples": k, "throughput_samples_per_s": round(k / t.wall, 3),
            "throughput_s": round(t.wall, 2), "one_sample_latency_s": latency_s,
            "throughput_cpu_usage": cpu_usage(t), "throughput_equals_simulate": exact,
            "throughput_prediction_agreement": agreement}


def release_keys(circuit) -> None:
    """Forget the generated keys (GBs per circuit here): simulation and costs do not need them.

    concrete-python keeps them in ``circuit.client``; a fresh, empty key set replaces them.
    """
    client = getattr(circuit, "client", None)
    keys = getattr(client, "_keys", None)
    if keys is not None:
        client._keys = type(keys)(client.specs)


def measure_fhe(circuit, run: Callable[[np.ndarray, str], np.ndarray], X_test: np.ndarray, simulated: np.ndarray,
                fhe_samples: int, throughput_samples: int = 0, throughput_budget_s: float = 0.0) -> dict:
    """Keygen, encrypted execution and (if ``throughput_samples``) throughput of a compiled model."""
    results = measure_keygen(circuit)
    results.update(measure_execute(run, X_test, simulated, fhe_samples))
    if throughput_samples > 0:
        results.update(measure_throughput(run, X_test, simulated, throughput_samples, throughput_budget_s,
                                          results["execute_s_per_sample"]))
    release_keys(circuit)
    return results


def time_simulate(run: Callable[[np.ndarray, str], np.ndarray], X: np.ndarray) -> tuple[np.ndarray, float]:
    """``run(X, "simulate")`` and its wall time in seconds."""
    with stopwatch() as t:
        simulated = run(X, "simulate")
    return simulated, t.wall


# -- NeuralNetClassifier defaults ------------------------------------------------------------
def benchmark_estimator(
    seed: int = 0,
    measure_encrypted: bool = True,
    fhe_samples: int = 2,
    throughput_samples: int = 0,
    throughput_budget_s: float = 300.0,
    estimator_params: Optional[dict] = None,
    data: Optional[tuple] = None,
) -> tuple[dict, object, tuple]:
    """``make_pipeline(StandardScaler(), NeuralNetClassifier(**estimator_params))`` on the checkerboard.

    Returns ``(results, fitted_pipeline, (X_train, X_test, y_train, y_test))``; keygen,
    execution and throughput only with ``measure_encrypted``.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fheestimators import NeuralNetClassifier, make_checkerboard

    torch.manual_seed(seed)
    X_train, X_test, y_train, y_test = data if data is not None else make_checkerboard(random_state=seed)
    model = make_pipeline(StandardScaler(), NeuralNetClassifier(**(estimator_params or {})))
    with stopwatch() as t:
        model.fit(X_train, y_train)
    results = {"seed": seed, "fit_s": round(t.wall, 2), "bayes_accuracy": board_rule_accuracy(X_test, y_test)}
    clf = model[-1]
    results["brevitas_accuracy"] = float((brevitas_predict(model, X_test) == y_test).mean())
    results["disable_accuracy"] = float((model.predict(X_test) == y_test).mean())
    X_fresh, y_fresh = fresh_board_points()
    results["fresh_points"] = len(y_fresh)
    results["fresh_bayes_accuracy"] = board_rule_accuracy(X_fresh, y_fresh)
    results["fresh_brevitas_accuracy"] = float((brevitas_predict(model, X_fresh) == y_fresh).mean())
    results["fresh_disable_accuracy"] = float((model.predict(X_fresh) == y_fresh).mean())
    results["fresh_simulate_accuracy"] = float((model.predict(X_fresh, fhe="simulate") == y_fresh).mean())
    simulated, simulate_s = time_simulate(lambda X, fhe: model.predict(X, fhe=fhe), X_test)
    results["simulate_s_500"] = round(simulate_s, 4)
    results["simulate_accuracy"] = float((simulated == y_test).mean())
    with stopwatch() as t:
        clf.compile(model[0].transform(X_train))
    results["compile_s"] = round(t.wall, 2)
    circuit = clf.fhe_circuit
    results.update(circuit_costs(circuit))
    results["accumulator_bits"] = int(clf.quantized_module_.max_bit_width)
    if measure_encrypted:
        results.update(measure_fhe(circuit, lambda X, fhe: model.predict(X, fhe=fhe), X_test, simulated,
                                   fhe_samples, throughput_samples, throughput_budget_s))
    return results, model, (X_train, X_test, y_train, y_test)
