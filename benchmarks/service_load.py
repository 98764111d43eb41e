"""The service under load: honest clients' latency and throughput, alone and while an attacker runs beside them.

``fheestimators serve`` runs in a subprocess on 127.0.0.1 with its default limits (two
evaluator processes on this 2-core machine). Honest clients send one encrypted sample
at a time for a fixed time, first alone, then while an attacker (another process on the
same 2 cores) sends, in a loop:

- bombs: a 1 KB container declaring a 10 GB member, and a bzip2 zip bomb of 64 MB;
- random ciphertexts of the right sizes, with the attacker's own registered keys;
- crafted keys (another model's, grown to this model's size by one more segment their
  framing declares, new bytes in it each time so the quarantine cannot recognize them):
  uploaded, then used, which crashes an evaluator (merely padded, they are refused at upload);
- a flood of anonymous uploads of valid keys (the store fills, then refuses);
- jobs that fill the work queue.

Printed: latency (median, 90th percentile) and samples/s of the honest clients in both
phases (with ``--per-attack``, also beside each attack alone) and the CPU time of the
service's HTTP process meanwhile, the attacker's answers by status, the service
process's peak memory, and the evaluators' restarts (from ``/metrics``). Each attack
thread keeps its connection while the service keeps it open.

The honest clients connect from 127.0.0.1, each attacker from an address of its own
(127.0.0.2 and up: Linux routes all of 127.0.0.0/8 to this machine), as on the internet;
``--penalty`` adds what an address that keeps being refused costs, and what refusals from
many addresses cost the service's memory.

Run: ``python benchmarks/service_load.py > benchmarks/results_service_load.json``
(about 10 minutes; ``--quick`` trains a small network for a smoke run). ``--before REF``
runs it on git ref REF and on this tree, one after the other (``_versions.compare``).
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine, standardized_checkerboard  # noqa: E402
from _versions import report  # noqa: E402
from deployment import start_service  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deployment"))
from crafted_keys import declaring, reframed  # noqa: E402

from fheestimators import NeuralNetClassifier  # noqa: E402
from fheestimators.deployment import Client, RemoteModel, container, save  # noqa: E402


def peak_memory_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def from_address(address: str, timeout: float = 600) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (one of 127.0.0.0/8)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)


def metric(url: str, name: str) -> float:
    lines = httpx.get(f"{url}/metrics/").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.split("{")[0].split(" ")[0] == name)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def honest_phase(models: list[RemoteModel], rows: np.ndarray, seconds: float, pid: int) -> dict:
    """Each model predicts one row at a time for ``seconds``; latencies of the successes, and the CPU
    time the service's HTTP process (where refusals are parsed) used meanwhile."""
    latencies, errors = [], collections.Counter()
    stop = time.monotonic() + seconds

    def loop(model: RemoteModel, offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                model.predict(rows[i % len(rows) : i % len(rows) + 1])
                latencies.append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001: counted, the loop goes on
                errors[type(error).__name__] += 1
            i += 1

    started, cpu = time.monotonic(), cpu_seconds(pid)
    threads = [threading.Thread(target=loop, args=(model, k)) for k, model in enumerate(models)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"samples": len(latencies), "samples_per_s": round(len(latencies) / elapsed, 3),
            "latency_median_s": round(float(np.median(latencies)), 3) if latencies else None,
            "latency_p90_s": round(float(np.percentile(latencies, 90)), 3) if latencies else None,
            "errors": dict(errors), "service_http_process_cpu_s": round(cpu_seconds(pid) - cpu, 2)}


def probe_health(url: str, stop: threading.Event, latencies: list) -> None:
    """``/health`` once a second until ``stop``: how long an operator's probe waits."""
    while not stop.is_set():
        start = time.perf_counter()
        httpx.get(f"{url}/health", timeout=30)
        latencies.append(time.perf_counter() - start)
        stop.wait(1.0)


class Attacker:
    """Threads that send hostile requests until stopped; answers counted by attack and status."""

    def __init__(self, url: str, folder: Path, foreign: Path, rows: np.ndarray, work: Path, address: str):
        self.url, self.stop, self.address = url, threading.Event(), address
        self._http: dict[tuple, httpx.Client] = {}  # by thread and address: connections are kept while served
        self.answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.own = RemoteModel(url, folder, key_dir=work / f"attacker-{address}",
                               transport=httpx.HTTPTransport(local_address=address))
        self.own._register_once()
        self.keys = self.own.client.evaluation_keys()
        header, members = container.unpack(self.keys, "evaluation_keys")
        self.versions, size = header["versions"], len(members["keys"])
        foreign_keys = container.unpack(Client(foreign).evaluation_keys(), "evaluation_keys")[1]["keys"]
        self.crafted_base = reframed(foreign_keys, size)  # a framing that holds: the keys reach an evaluator
        genuine = container.unpack(self.own.client.encrypt(rows[:1]), "inputs")
        rng = np.random.default_rng(0)
        fields = {k: v for k, v in genuine[0].items() if k not in ("format", "kind", "fingerprint")}
        self.garbage = container.pack("inputs", self.own.fingerprint,
                                      {n: rng.bytes(len(v)) for n, v in genuine[1].items()}, **fields)
        self.queue_filler = self.own.client.encrypt(np.resize(rows, (64, rows.shape[1])))
        self.bombs = [self._declared_bomb(), self._zip_bomb()]

    def _declared_bomb(self) -> bytes:
        body = container.pack("evaluation_keys", self.own.fingerprint, {"keys": bytes(1000)}, versions=self.versions)
        return declaring(body, 10_000_000_000)

    @staticmethod
    def _zip_bomb() -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive, archive.open("keys", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
        return buffer.getvalue()

    def _send(self, attack: str, method: str, path: str, **kwargs) -> httpx.Response:
        http = self._http.get((threading.get_ident(), self.address))
        if http is None:
            http = self._http[threading.get_ident(), self.address] = from_address(self.address)
        try:
            response = http.request(method, self.url + path, **kwargs)
            self.answers[attack][response.status_code] += 1
            return response
        except httpx.HTTPError as error:
            self.answers[attack][type(error).__name__] += 1
            return None

    def _loop(self, attack) -> None:
        count = 0
        while not self.stop.is_set():
            attack(count)
            count += 1

    def bombs_(self, i: int) -> None:
        self._send("bombs", "POST", "/keys", content=self.bombs[i % 2])

    def garbage_(self, i: int) -> None:
        self._send("random ciphertexts", "POST", f"/clients/{self.own.client_id}/predict", content=self.garbage,
                   headers={"Authorization": f"Bearer {self.own._client_token}"})

    def crafted_(self, i: int) -> None:
        keys = bytearray(self.crafted_base)
        keys[-8:] = i.to_bytes(8, "big")  # new bytes each time: the quarantine does not know them
        body = container.pack("evaluation_keys", self.own.fingerprint, {"keys": bytes(keys)}, versions=self.versions)
        created = self._send("crafted keys: upload", "POST", "/keys", content=body)
        if created is not None and created.status_code == 201:
            client = created.json()
            self._send("crafted keys: predict", "POST", f"/clients/{client['client_id']}/predict",
                       content=self.own.client.encrypt(np.zeros((1, 2), dtype=np.float32)),
                       headers={"Authorization": f"Bearer {client['token']}"})
        time.sleep(1.0)

    def flood_(self, i: int) -> None:
        created = self._send("anonymous uploads", "POST", "/keys", content=self.keys)
        if created is not None and created.status_code == 507:
            time.sleep(1.0)

    def fill_queue_(self, i: int) -> None:
        submitted = self._send("queue-filling jobs", "POST", f"/clients/{self.own.client_id}/jobs",
                               content=self.queue_filler, headers={"Authorization": f"Bearer {self.own._client_token}"})
        if submitted is not None and submitted.status_code == 429:
            time.sleep(float(submitted.headers.get("Retry-After", 1)))

    ATTACKS = ("bombs_", "garbage_", "crafted_", "flood_", "fill_queue_")

    def start(self, names: tuple = ATTACKS) -> list[threading.Thread]:
        attacks = [getattr(self, name) for name in names]
        threads = [threading.Thread(target=self._loop, args=(attack,), daemon=True) for attack in attacks]
        for thread in threads:
            thread.start()
        return threads


def single_attacks(attacker: "Attacker", pid: int, honest: RemoteModel, rows: np.ndarray) -> dict:
    """Each attack once: its answer, how long the refusal took, what it added to the service's peak
    memory, and how long an honest prediction took right after (an evaluator may be restarting)."""
    attacks = {"declared 10 GB member, 1 KB body": attacker.bombs_, "bzip2 zip bomb of 64 MB": attacker.bombs_,
               "random ciphertexts": attacker.garbage_, "crafted keys, uploaded then used": attacker.crafted_,
               "anonymous upload of valid keys": attacker.flood_}
    results = {}
    for i, (name, attack) in enumerate(attacks.items()):
        attacker.answers.clear()
        attacker.address = f"127.0.0.{3 + i}"  # each from an address of its own: none pays for another's refusals
        before, start = peak_memory_mb(pid), time.perf_counter()
        attack(i if attack is attacker.bombs_ else 10_000 + i)
        seconds = time.perf_counter() - start - (1.0 if attack is attacker.crafted_ else 0.0)
        grown = peak_memory_mb(pid) - before
        start = time.perf_counter()
        honest.predict(rows[:1])
        results[name] = {"answers": {a: {str(k): v for k, v in c.items()} for a, c in attacker.answers.items()},
                         "seconds": round(seconds, 3), "service_peak_memory_growth_mb": round(grown, 1),
                         "honest_prediction_after_s": round(time.perf_counter() - start, 3)}
    attacker.answers.clear()
    return results


def penalized_requests(url: str, pid: int, address: str, bomb: bytes, n: int = 20) -> dict:
    """From an address that has been refused until the service penalizes it (or 50 times): what its
    requests then cost, a bomb and a body declared but never sent."""
    answers, seconds = collections.Counter(), []
    with from_address(address) as http:
        for _ in range(50):
            if http.post(url + "/keys", content=bomb).status_code == 429:
                break
        before = peak_memory_mb(pid)
        for _ in range(n):
            start = time.perf_counter()
            answers[http.post(url + "/keys", content=bomb).status_code] += 1
            seconds.append(time.perf_counter() - start)
    # headers declaring 10 MB, then nothing: served, the service waits for the body; penalized, it answers
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5, source_address=(address, 0)) as raw:
        start = time.perf_counter()
        raw.sendall(f"POST /keys HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10000000\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n".encode())
        try:
            first = raw.recv(64).split(b" ")[1].decode()
        except (socket.timeout, IndexError):
            first = "no answer within 5 s"
        unsent = {"answer": first, "seconds": round(time.perf_counter() - start, 3)}
    return {"bomb_answers": dict(answers), "bomb_seconds_median": round(float(np.median(seconds)), 4),
            "bomb_seconds_max": round(max(seconds), 4),
            "service_peak_memory_growth_mb": round(peak_memory_mb(pid) - before, 1),
            "declared_10_mb_body_never_sent": unsent}


def many_addresses(url: str, pid: int, n: int) -> dict:
    """One refused request (an unknown route) from each of ``n`` addresses: the service's memory after."""
    before, start = peak_memory_mb(pid, "VmRSS"), time.perf_counter()
    answers = collections.Counter()
    for i in range(n):
        with from_address(f"127.1.{i // 250}.{i % 250 + 1}", timeout=30) as http:
            answers[http.get(url + "/no-such-route").status_code] += 1
    return {"addresses": n, "answers": dict(answers),
            "seconds_per_request": round((time.perf_counter() - start) / n, 4),
            "service_memory_growth_mb": round(peak_memory_mb(pid, "VmRSS") - before, 1),
            "address_counts_kept": metric(url, "fheestimators_address_counts")}


def attack_until(url: str, folder: Path, foreign: Path, rows: np.ndarray, work: Path, ready, stop, answers,
                 names: tuple = Attacker.ATTACKS, address: str = "127.0.0.2") -> None:
    """The attacks ``names`` at once, in this process (not sharing the honest clients' interpreter), until ``stop``."""
    attacker = Attacker(url, folder, foreign, rows, work, address)
    attacker.stop = stop
    attacker.start(names)
    ready.set()
    stop.wait()
    answers.put({attack: {str(k): v for k, v in counts.items()} for attack, counts in attacker.answers.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small network, short phases")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each phase")
    parser.add_argument("--per-attack", action="store_true",
                        help="before all attacks at once, one phase beside each attack alone")
    parser.add_argument("--penalty", type=int, default=0, metavar="N",
                        help="also: requests of a penalized address, and refusals from N addresses")
    parser.add_argument("--before", help="git ref: run on it and on this tree, and print both")
    parser.add_argument("--one-version", action="store_true", help="measure the imported code only (the default)")
    args, _ = parser.parse_known_args()
    if args.before and not args.one_version:
        argv = sys.argv[1:]
        del argv[argv.index("--before"):argv.index("--before") + 2]
        report(__file__, argv, args.before)
        return
    seconds = 30.0 if args.quick else args.seconds
    X_train, X_test, y_train, _ = standardized_checkerboard()
    settings = dict(max_epochs=5, module__n_hidden=16, rounding_threshold_bits=5) if args.quick else {}
    work = Path(tempfile.mkdtemp(prefix="fheestimators-load-"))
    log("training and saving the model and a foreign one")
    folder = save(NeuralNetClassifier(random_state=0, **settings).fit(X_train, y_train), work / "model")
    # smaller keys than the model's (a network on raw features, 3-bit lookups): grown to its size, they still load
    other = NeuralNetClassifier(random_state=0, max_epochs=2, module__n_hidden=2, rounding_threshold_bits=3,
                                input_bins=None)
    foreign = save(other.fit(X_train[:, ::-1].copy(), y_train), work / "foreign")
    process, url = start_service(folder, "--key-store", str(work / "store"))
    try:
        models = [RemoteModel(url, folder, key_dir=work / f"honest{k}") for k in range(2)]
        for model in models:
            model._register_once()
        log(f"honest clients alone, {seconds:g} s")
        alone = honest_phase(models, X_test, seconds, process.pid)
        attacker = Attacker(url, folder, foreign, X_test, work, "127.0.0.2")
        log("each attack once, alone")
        single = single_attacks(attacker, process.pid, models[0], X_test)
        context = multiprocessing.get_context("spawn")
        one_by_one = {}
        for k, name in enumerate(Attacker.ATTACKS if args.per_attack else ()):
            log(f"honest clients beside one attack, {name.rstrip('_')}, {seconds:g} s")
            ready, stop, answers = context.Event(), context.Event(), context.Queue()
            hostile = context.Process(target=attack_until, args=(url, folder, foreign, X_test, work, ready, stop,
                                                                 answers, (name,), f"127.0.0.{10 + k}"))
            hostile.start()
            ready.wait(600)
            one_by_one[name.rstrip("_")] = honest_phase(models, X_test, seconds, process.pid)
            stop.set()
            one_by_one[name.rstrip("_")]["attacker_answers"] = answers.get(timeout=600)
            hostile.join(60)
        log(f"honest clients beside the attacker (a process of its own), {seconds:g} s")
        ready, stop, answers = context.Event(), context.Event(), context.Queue()
        hostile = context.Process(target=attack_until, args=(url, folder, foreign, X_test, work, ready, stop, answers,
                                                             Attacker.ATTACKS, "127.0.0.20"))
        hostile.start()
        ready.wait(600)
        health = threading.Thread(target=probe_health, args=(url, stop, health_latencies := []), daemon=True)
        health.start()
        attacked = honest_phase(models, X_test, seconds, process.pid)
        stop.set()
        attacker_answers = answers.get(timeout=600)
        hostile.join(60)
        penalty = {}
        if args.penalty:
            log("a penalized address's requests; refusals from many addresses")
            penalty = {"penalized_address": penalized_requests(url, process.pid, "127.0.0.30", attacker.bombs[0]),
                       "many_addresses": many_addresses(url, process.pid, args.penalty)}
        result = {
            "machine": machine(),
            "model": "NeuralNetClassifier(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")",
            "phase_seconds": seconds,
            "single_attacks": single,
            "honest_alone": alone,
            "honest_beside_one_attack": one_by_one,
            "honest_under_attack": attacked,
            "attacker_answers": attacker_answers,
            "service_peak_memory_mb": peak_memory_mb(process.pid),
            "evaluator_restarts": metric(url, "fheestimators_worker_restarts_total"),
            "quarantined_key_sets": metric(url, "fheestimators_quarantined_key_sets_total"),
            "health_latency_s_under_attack": {"max": round(max(health_latencies), 4),
                                              "median": round(float(np.median(health_latencies)), 4),
                                              "probes": len(health_latencies)},
            **penalty,
        }
        print(json.dumps(result, indent=1))
    finally:
        process.terminate()
        process.wait(60)


if __name__ == "__main__":
    main()
