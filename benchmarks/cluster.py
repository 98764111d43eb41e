"""Scale-out figures: ``Server(path, dask=...)`` on a local dask cluster against one process.

``NeuralNetClassifier()`` is trained on the standardized checkerboard (as
``deployment.py`` does) and saved; one client encrypts N test points once, and the same
ciphertexts run, in the same run of this script:

* in process with ``predict(X, fhe="execute")`` (the estimator's own circuit, keys and
  encryption: its labels are compared, not its ciphertexts);
* with ``Server(path).run`` alone (no cluster);
* with ``Server(path, dask=client)`` on a ``distributed.LocalCluster`` of worker processes
  (1 and 2 by default; threads per worker: cores / workers).

Every timed run follows an untimed warm-up that loads the keys: for the cluster, batches
of 2 samples per worker thread until every worker has loaded the artefact and the keys
(their time, shipping included, is recorded). For the cluster, also: the bytes the
server scattered (``ClusterRunner.shipped_bytes``) and the bytes each worker received
(a worker plugin), worker CPU seconds, worker memory, and the scheduler's overhead per
chunk. ``sizing`` turns the CPU seconds per sample of the run with the most workers into
samples per day per 64-core node.

Run: ``python benchmarks/cluster.py`` (200 samples, about 15 minutes on 2 cores; writes
``benchmarks/results_cluster.json``). Smoke run, a few minutes:
``python benchmarks/cluster.py --samples 4 --small --output /tmp/results_cluster.json``.
JSON goes to stdout and to ``--output``, progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import distributed
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine, release_keys, standardized_checkerboard, stopwatch  # noqa: E402

from fheestimators import NeuralNetClassifier  # noqa: E402
from fheestimators.deployment import Client, Server, save  # noqa: E402
from fheestimators.deployment.cluster import RETRIES, TASK_PREFIX, worker_cache_info  # noqa: E402
from fheestimators.deployment.wire import unpack_values  # noqa: E402

MB = 2**20
NODE_CORES = 64
SAMPLES_PER_DAY = 10_000_000
SECONDS_PER_DAY = 86_400
# --small: the deployment page's tiny network, seconds to train, small keys
SMALL = dict(max_epochs=3, module__n_hidden=4, module__n_input_bits=3, module__n_w_bits=2, module__n_a_bits=2,
             rounding_threshold_bits=None, p_error=1e-9)
PLUGIN = "fheestimators-benchmark-received"


class ReceivedData(distributed.WorkerPlugin):
    """On each worker: every piece of data it received (a scatter or a copy from another worker).

    Data computed on the worker itself (a task's result) is not counted.
    """

    def setup(self, worker) -> None:
        self.worker = worker
        self.received: list[tuple[str, int]] = []

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "memory" and start not in ("executing", "long-running"):
            task = self.worker.state.tasks.get(key)
            self.received.append((str(key), int(task.nbytes) if task is not None and task.nbytes else 0))


def _received(dask_worker) -> list:
    return dask_worker.plugins[PLUGIN].received


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _omp_threads() -> str:
    return str(os.environ.get("OMP_NUM_THREADS"))


def _no_fhe_chunk(samples: list, output_sizes: list[int]) -> tuple[str, list]:
    """A chunk without FHE: outputs of the real size, for the scheduler's overhead."""
    return "done", [[os.urandom(size) for size in output_sizes] for _ in samples]


def rate(samples: int, seconds: float) -> float:
    return round(samples / seconds, 4) if seconds > 0 else 0.0


def in_process(clf, X: np.ndarray) -> tuple[np.ndarray, dict]:
    """``predict(X, fhe="execute")``: samples in one thread per core, encrypted and decrypted here."""
    circuit = clf.fhe_circuit
    circuit.keygen()
    clf.predict(X[:1], fhe="execute")  # the one-off set-up
    with stopwatch() as t:
        labels = clf.predict(X, fhe="execute")
    release_keys(circuit)
    return labels, {"seconds": round(t.wall, 2), "samples_per_s": rate(len(X), t.wall),
                    "cpu_s_per_sample": round(t.cpu / len(X), 3), "threads": os.cpu_count(),
                    "includes": "encryption and decryption of each sample"}


def server_alone(folder: Path, payload: bytes, warmup: bytes, keys: bytes, n_samples: int) -> tuple[bytes, dict]:
    """``Server(path).run``: samples in one thread per core of this process."""
    server = Server(folder)
    with stopwatch() as w:
        server.run(warmup, keys)  # deserializes the keys, kept for the next runs
    with stopwatch() as t:
        outputs = server.run(payload, keys)
    return outputs, {"seconds": round(t.wall, 2), "samples_per_s": rate(n_samples, t.wall),
                     "cpu_s_per_sample": round(t.cpu / n_samples, 3), "threads": server.n_workers,
                     "warmup_s": round(w.wall, 2)}


def on_cluster(folder: Path, n_workers: int, threads: int, payload: bytes, warmup: bytes, keys: bytes,
               n_samples: int) -> tuple[bytes, dict]:
    """``Server(path, dask=client)`` on a fresh ``LocalCluster`` of ``n_workers`` processes."""
    work = tempfile.mkdtemp(prefix="fheestimators-cluster-")
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True,
                                  local_directory=work, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster, set_as_default=False) as dask:
        dask.register_plugin(ReceivedData(), name=PLUGIN)
        rss_start = dask.run(_rss)
        omp = sorted(set(dask.run(_omp_threads).values()))
        with Server(folder, dask=dask) as server:
            warmups = []
            for _ in range(3):  # until every worker has the artefact and the keys loaded
                with stopwatch() as w:
                    server.run(warmup, keys)
                warmups.append(round(w.wall, 2))
                loaded = [cache["loads"]["keys"] > 0 for cache in dask.run(worker_cache_info).values()]
                if all(loaded):
                    break
            rss_warm = dask.run(_rss)
            cpu_start = dask.run(time.process_time)
            with distributed.get_task_stream(dask) as stream, stopwatch() as t:
                outputs = server.run(payload, keys)
            cpu_s = sum(dask.run(time.process_time).values()) - sum(cpu_start.values())
            tasks = [task for task in stream.data if str(task["key"]).startswith(TASK_PREFIX)]
            compute_s = sum(step["stop"] - step["start"] for task in tasks for step in task["startstops"]
                            if step["action"] == "compute")

            # the same chunks through the same client, without FHE
            chunks = server.cluster.chunks(unpack_values(payload, "inputs", server.fingerprint))
            output_sizes = [len(value) for value in unpack_values(outputs, "outputs", server.fingerprint)[0]]
            with stopwatch() as trivial:
                futures = dask.map(_no_fhe_chunk, chunks, output_sizes=output_sizes, key="benchmark-no-fhe",
                                   pure=False, retries=RETRIES)
                dask.gather(futures)
            del futures

            kinds = {server.cluster._artefact.key: "artefact"}
            kinds.update({future.key: "keys" for _, future, _ in server.cluster._keys.values()})
            shipped_bytes, scatters = dict(server.cluster.shipped_bytes), server.cluster.shipped
        received = {}
        for worker, items in dask.run(_received).items():
            totals = {"artefact": 0, "keys": 0, "other": 0}
            for key, nbytes in items:
                totals[kinds.get(key, "other")] += nbytes
            received[worker] = totals
        caches = dask.run(worker_cache_info)
        total_threads = sum(dask.nthreads().values())
    n_chunks = len(chunks)
    return outputs, {
        "n_workers": n_workers, "threads_per_worker": threads, "processes": True,
        "worker_omp_num_threads": omp,
        "seconds": round(t.wall, 2), "samples_per_s": rate(n_samples, t.wall),
        "worker_cpu_s": round(cpu_s, 2), "worker_cpu_s_per_sample": round(cpu_s / n_samples, 3),
        "chunks": n_chunks, "tasks": len(tasks),
        "warmup_batches_s": warmups, "warmup_samples": len(unpack_values(warmup, "inputs", server.fingerprint)),
        "workers_with_keys_loaded": sum(cache["loads"]["keys"] > 0 for cache in caches.values()),
        "key_loads_per_worker": sorted(cache["loads"]["keys"] for cache in caches.values()),
        "scatters": scatters,
        "shipped_bytes_per_worker": shipped_bytes,
        "received_bytes_by_worker": received,
        "worker_rss_mb": {"start": sorted(round(v / MB, 1) for v in rss_start.values()),
                          "after_warmup": sorted(round(v / MB, 1) for v in rss_warm.values())},
        "worker_rss_growth_mb_max": round(max(rss_warm[w] - rss_start[w] for w in rss_warm) / MB, 1),
        "scheduler_overhead": {
            "definition": "wall seconds of the same chunks (same ciphertexts in, random outputs of the same "
                          "size back) run through the same client without FHE, divided by the number of chunks",
            "no_fhe_batch_s": round(trivial.wall, 3),
            "s_per_chunk": round(trivial.wall / n_chunks, 4),
            "fraction_of_run": round(trivial.wall / t.wall, 5),
        },
        "idle_thread_s_per_chunk": {
            "definition": "(wall seconds x worker threads - sum of the tasks' compute seconds) / chunks: "
                          "scheduling, transfers and the last chunks' imbalance",
            "value": round((t.wall * total_threads - compute_s) / n_chunks, 3),
        },
    }


def equal_raw(client: Client, a: bytes, b: bytes) -> bool:
    """The decrypted integer outputs of two results are the same."""
    return all(np.array_equal(x, y) for x, y in zip(client.decrypt_raw(a), client.decrypt_raw(b), strict=True))


def sizing(runs: dict, key_bytes: int) -> dict:
    """Samples per day per node from the CPU seconds per sample of the run with the most workers."""
    name, run = max(((name, run) for name, run in runs.items() if name.startswith("cluster_")),
                    key=lambda item: item[1]["n_workers"])
    cpu_s = run["worker_cpu_s_per_sample"]
    per_node = SECONDS_PER_DAY * NODE_CORES / cpu_s if cpu_s > 0 else 0.0
    cores = os.cpu_count() or 1
    return {
        "basis": f"runs.{name}: worker CPU seconds / samples",
        "cpu_s_per_sample": cpu_s,
        "core_s_per_sample_from_wall": round(cores / run["samples_per_s"], 3) if run["samples_per_s"] else None,
        "node_cores": NODE_CORES,
        "samples_per_day_per_node": round(per_node),
        "samples_per_day_target": SAMPLES_PER_DAY,
        "nodes_needed": math.ceil(SAMPLES_PER_DAY / per_node) if per_node else None,
        "evaluation_keys_mb_shipped_per_worker_per_client": round(key_bytes / MB, 1),
        "worker_rss_growth_mb_one_client": runs.get("cluster_1_worker", run)["worker_rss_growth_mb_max"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200, help="encrypted samples per run (at most 500)")
    parser.add_argument("--max-epochs", type=int, help="override the estimator's epochs (a faster fit)")
    parser.add_argument("--small", action="store_true",
                        help="a tiny network trained 3 epochs instead of NeuralNetClassifier(): a smoke run")
    parser.add_argument("--workers", default="1,2", help="worker processes of each cluster run (comma list)")
    parser.add_argument("--threads-per-worker", type=int, help="default: cores / workers, at least 1")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results_cluster.json")
    args = parser.parse_args(argv)
    start = machine()
    cores = os.cpu_count() or 1

    params = dict(SMALL) if args.small else {}
    if args.max_epochs is not None:
        params["max_epochs"] = args.max_epochs
    X_train, X_test, y_train, y_test = standardized_checkerboard()
    X = X_test[: args.samples]
    n = len(X)
    log(f"NeuralNetClassifier({', '.join(f'{k}={v}' for k, v in params.items())}): fit")
    clf = NeuralNetClassifier(random_state=0, **params).fit(X_train, y_train)
    work = Path(tempfile.mkdtemp(prefix="fheestimators-scale-out-"))
    folder = save(clf, work / "model")
    client = Client(folder, key_dir=work / "keys")
    client.keygen()
    keys = client.evaluation_keys()
    payload = client.encrypt(X)

    log(f"in-process predict(fhe='execute'), {n} samples")
    labels, predict_run = in_process(clf, X)
    runs = {"in_process_predict": predict_run}
    log(f"Server(path).run, {n} samples")
    reference, runs["server_run"] = server_alone(folder, payload, client.encrypt(X[:1]), keys, n)
    server_labels = client.decrypt(reference)
    equal, agree = {}, {}
    for n_workers in (int(w) for w in args.workers.split(",")):
        threads = args.threads_per_worker or max(1, cores // n_workers)
        name = f"cluster_{n_workers}_worker{'s' if n_workers > 1 else ''}"
        log(f"Server(path, dask=...) on {n_workers} worker(s) x {threads} thread(s), {n} samples")
        warmup = client.encrypt(X[: 2 * n_workers * threads])
        outputs, runs[name] = on_cluster(folder, n_workers, threads, payload, warmup, keys, n)
        equal[name] = equal_raw(client, outputs, reference)
        agree[name] = round(float(np.mean(client.decrypt(outputs) == server_labels)), 4)

    key_bytes = len(Server(folder).check_evaluation_keys(keys))
    results = {
        "machine": start,
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "distributed_version": distributed.__version__,
        "model": "NeuralNetClassifier(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")",
        "samples": n,
        "sizes_bytes": {
            "server_zip": (folder / "server.zip").stat().st_size,
            "evaluation_keys_shipped": key_bytes,
            "input_per_sample": round(len(payload) / n, 1),
            "output_per_sample": round(len(reference) / n, 1),
        },
        "runs": runs,
        "cluster_outputs_equal_server_run": equal,
        "cluster_labels_agree_with_server_run": agree,
        "server_labels_agree_with_in_process_predict": round(float(np.mean(server_labels == labels)), 4),
        "note": "the cluster runs and Server.run get the same ciphertexts and keys; a process runs them the "
                "same every time, but two processes can read a lookup near a rounding edge differently, so at "
                "a large p_error the outputs need not be bit-equal (they are at a negligible one, as the tests "
                "check); predict(fhe='execute') encrypts with its own keys and noise",
        "sizing": sizing(runs, key_bytes),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
