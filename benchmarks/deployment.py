"""Deployment figures: artefact, key and ciphertext sizes, HTTP latency against in-process
``execute`` in the same run, key upload time and throughput with concurrent clients.

For ``NeuralNetClassifier()`` on the checkerboard data and for the specification's
``QATPrunedSimpleNet`` (100 hidden, 20 non-zero per neuron, 3 bits, 7 epochs) compiled
with ``compile_brevitas_qat_model``. The service is the real one: ``fheestimators serve``
in a subprocess on 127.0.0.1.

Run: ``python benchmarks/deployment.py > results_deployment.json`` (about 15 minutes;
``--quick`` trains briefly for a smoke run). JSON goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine, standardized_checkerboard  # noqa: E402
from _networks import QATPrunedSimpleNet, train  # noqa: E402

from fheestimators import NeuralNetClassifier, compile_brevitas_qat_model  # noqa: E402
from fheestimators.deployment import Client, RemoteModel, Server, save  # noqa: E402


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(folder: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """``fheestimators serve folder *options`` on a free port of 127.0.0.1, once it answers."""
    port = free_port()
    # from the model's folder: "python -m" puts its folder first on sys.path, ahead of the version measured
    process = subprocess.Popen([sys.executable, "-m", "fheestimators.deployment", "serve", str(Path(folder).resolve()),
                                "--port", str(port), *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(folder).resolve().parent)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the service did not start")


def measure(name: str, model, module, X_test: np.ndarray, repeats: int, n_concurrent: int) -> dict:
    log(f"{name}: save")
    work = Path(tempfile.mkdtemp(prefix="fheestimators-deploy-"))
    start = time.perf_counter()
    folder = save(model, work / "model")
    save_s = time.perf_counter() - start
    client = Client(folder, key_dir=work / "keys")
    start = time.perf_counter()
    client.keygen()
    keygen_s = time.perf_counter() - start
    keys = client.evaluation_keys()
    payload_1 = client.encrypt(X_test[:1])
    payload_10 = client.encrypt(X_test[:10])
    server = Server(folder)
    result_10 = server.run(payload_10, keys)

    log(f"{name}: in-process execute (uncompressed circuit) and Server.run")
    circuit = module.fhe_circuit
    circuit.keygen()
    q = module.quantize_input(X_test[:1])
    plain_keys = len(circuit.keys.evaluation.serialize())
    plain_input = len(circuit.encrypt(q).serialize())
    execute_s = median_seconds(lambda: module.forward(X_test[:1], fhe="execute"), repeats)
    server_run_s = median_seconds(lambda: server.run(payload_1, keys), repeats)

    log(f"{name}: HTTP")
    process, url = start_service(folder, "--workers", "1", "--key-store", str(work / "key-store"))
    try:
        start = time.perf_counter()
        remote = RemoteModel(url, folder, key_dir=work / "remote-0")
        remote.predict(X_test[:1])  # keygen, key upload and the first run
        first_call_s = time.perf_counter() - start
        start = time.perf_counter()
        upload = httpx.post(f"{url}/keys", content=keys, timeout=600)
        upload.raise_for_status()
        upload_s = time.perf_counter() - start
        http_s = median_seconds(lambda: remote.predict(X_test[:1]), repeats)
        agree = bool(np.array_equal(remote.predict(X_test[:10]), client.decrypt(result_10)))

        remotes = [remote] + [RemoteModel(url, folder, key_dir=work / f"remote-{i}") for i in range(1, n_concurrent)]
        for other in remotes[1:]:
            other.predict(X_test[:1])
        done = []

        def one_client(r: RemoteModel) -> None:
            for i in range(repeats):
                r.predict(X_test[i : i + 1])
                done.append(1)

        threads = [threading.Thread(target=one_client, args=(r,)) for r in remotes]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_rate = len(done) / (time.perf_counter() - start)
    finally:
        process.kill()
        process.wait()
    return {
        "model": name,
        "sizes_bytes": {
            "client_zip": (folder / "client.zip").stat().st_size,
            "server_zip": (folder / "server.zip").stat().st_size,
            "evaluation_keys_compressed": len(keys),
            "evaluation_keys_uncompressed": plain_keys,
            "input_per_sample_compressed": len(payload_10) / 10,
            "input_per_sample_uncompressed": plain_input,
            "output_per_sample": len(result_10) / 10,
        },
        "seconds": {
            "save": round(save_s, 2),
            "client_keygen": round(keygen_s, 2),
            "key_upload_http": round(upload_s, 2),
            "first_remote_call_with_keygen_and_upload": round(first_call_s, 2),
            "one_sample_in_process_execute": execute_s,
            "one_sample_server_run_no_http": server_run_s,
            "one_sample_http": http_s,
        },
        "http_overhead_vs_execute": round(http_s / execute_s - 1, 3),
        "samples_per_second_concurrent_clients": round(concurrent_rate, 3),
        "concurrent_clients": n_concurrent,
        "http_equals_in_process_server": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # standardized as the demo's pipeline does: the deployed estimator then sees the same rows
    X_train, X_test, y_train, y_test = standardized_checkerboard()
    results = {"machine": machine(), "rows": []}

    log("NeuralNetClassifier(): fit")
    clf = NeuralNetClassifier(**({"max_epochs": 20} if args.quick else {}), random_state=0).fit(X_train, y_train)
    row = measure("NeuralNetClassifier()", clf, clf.quantized_module_, X_test, args.repeats, 4)
    row["disable_accuracy"] = round(float((clf.predict(X_test) == y_test).mean()), 4)
    results["rows"].append(row)

    log("QATPrunedSimpleNet(100), 20 non-zero: train and compile")
    net = train(QATPrunedSimpleNet(100), X_train, y_train, epochs=1 if args.quick else 7, max_non_zero=20)
    net.eval()
    module = compile_brevitas_qat_model(net, X_train)
    results["rows"].append(measure("QATPrunedSimpleNet(100), 20 non-zero", module, module, X_test,
                                   max(2, args.repeats // 2), 2))
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
