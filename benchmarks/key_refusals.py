"""What refusing crafted evaluation keys costs the service, on the previous code and this tree.

The model of the lead's attack (issue 29): ``NeuralNetClassifier()`` fitted on raw
breast_cancer, served by ``fheestimators serve`` with its default limits; a 3-neuron
model on 3 features supplies "another model's keys" (larger than ours). Each upload is
timed from the request to the answer, with the service process's peak memory growth,
the bytes it added to the service's log, and the evaluators restarted meanwhile:

- an honest upload of valid keys (five times, each a new client, deleted after; the first
  one also starts the evaluator's work, the median is of the other four);
- the framing lies of ``tests/deployment/crafted_keys.py``: another model's keys cut to
  our size (the lead's attack), a segment declared 1 MB or 1 GB longer or 1 MB shorter
  than sent, a table of 65,536 segments;
- keys with three bits flipped in their structure (the 300 bytes after the table), which
  concrete-python refuses itself;
- keys of the right size and a sound framing whose bootstrap key's payload is 200 pointers to
  one 25 MB chunk (``amplified``), with the evaluators' peak resident memory: every service
  runs under a soft ``RLIMIT_DATA`` of 3 GiB (``prlimit``), inherited by its evaluators, so that
  code without a bound of its own stops there instead of at the machine's OOM killer;
- an honest prediction (one row, median of 3 after a first one), before the crafted uploads
  and once after them.

Run: ``python benchmarks/key_refusals.py > benchmarks/results_key_refusals.json``
(``--before REF``, HEAD by default; about 6 minutes). ``results_key_refusals.json`` measured
the framing check (``--before 4e01748``), ``results_key_refusals_memory.json`` the memory bound
(``--before ece3e64``).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "deployment"))
from _measure import log  # noqa: E402
from _versions import main  # noqa: E402
from crafted_keys import FRAMING_LIES, amplified, framing_lie  # noqa: E402
from deployment import free_port  # noqa: E402
from service_load import metric, peak_memory_mb  # noqa: E402
from serving import _children, _command  # noqa: E402

# the safety net of the before code (see the docstring)
SAFETY_DATA_LIMIT = 3 << 30
COPIES = 200


def _models(work: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_breast_cancer

    from fheestimators import NeuralNetClassifier
    from fheestimators.deployment import save

    X, y = load_breast_cancer(return_X_y=True)
    model = save(NeuralNetClassifier(random_state=0).fit(X.astype(np.float32), y), work / "model")
    rng = np.random.default_rng(0)
    X3 = rng.random((300, 3)).astype(np.float32)
    foreign = save(NeuralNetClassifier(max_epochs=3, module__n_hidden=3, p_error=0.3, random_state=0).fit(
        X3, np.where(X3.sum(1) > 1.5, "a", "b")), work / "foreign")
    return model, foreign


def _flipped(raw: bytes) -> bytes:
    flipped = bytearray(raw)
    rng = np.random.default_rng(0)
    for i in rng.integers(16, 316, 3):
        flipped[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(flipped)


def _evaluators(service: int) -> list[int]:
    return [pid for server in _children(service) if b"forkserver" in _command(server) for pid in _children(server)]


def _evaluator_memory(service: int) -> dict:
    """Each evaluator's peak resident memory and the ceiling of its private memory, in MB."""
    found = {}
    for pid in _evaluators(service):
        try:
            limits = Path(f"/proc/{pid}/limits").read_text().split("Max data size")[1].split()
            found[pid] = {"peak_mb": peak_memory_mb(pid),
                          "data_limit_mb": None if limits[0] == "unlimited" else int(limits[0]) >> 20}
        except (FileNotFoundError, IndexError):
            pass
    return found


def one_version() -> dict:
    from sklearn.datasets import load_breast_cancer

    import fheestimators
    from fheestimators.deployment import Client, container

    work = Path(tempfile.mkdtemp(prefix="fheestimators-key-refusals-"))
    log(f"models ({fheestimators.__file__})")
    model, foreign = _models(work)
    client = Client(model)
    keys = client.evaluation_keys()
    header, members = container.unpack(keys, "evaluation_keys")
    ours = members["keys"]
    theirs = container.unpack(Client(foreign).evaluation_keys(), "evaluation_keys")[1]["keys"]

    def dressed(raw: bytes) -> bytes:  # the container's header is public: anyone can write ours
        return container.pack("evaluation_keys", client.fingerprint, {"keys": raw}, versions=header["versions"])

    port, service_log = free_port(), work / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHEESTIMATORS_")}
    # run from the work folder: "python -m" puts its folder first on sys.path, ahead of PYTHONPATH's version
    code = subprocess.run([sys.executable, "-c", "import fheestimators; print(fheestimators.__file__)"], env=env,
                          cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    with open(service_log, "wb") as out:
        process = subprocess.Popen(["prlimit", f"--data={SAFETY_DATA_LIMIT}:", sys.executable, "-m",
                                    "fheestimators.deployment", "serve", str(model), "--port",
                                    str(port), "--key-store", str(work / "store")], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

        def upload(body: bytes) -> dict:
            before = peak_memory_mb(process.pid), service_log.stat().st_size
            restarts = metric(url, "fheestimators_worker_restarts_total")
            start = time.perf_counter()
            response = httpx.post(f"{url}/keys", content=body, timeout=600)
            seconds = time.perf_counter() - start
            result = {"status": response.status_code, "seconds": round(seconds, 3),
                      "service_peak_memory_growth_mb": round(peak_memory_mb(process.pid) - before[0], 1),
                      "log_bytes": service_log.stat().st_size - before[1],
                      "evaluator_restarts": metric(url, "fheestimators_worker_restarts_total") - restarts}
            if response.status_code == 201:
                created = response.json()
                httpx.delete(f"{url}/clients/{created['client_id']}",
                             headers={"Authorization": f"Bearer {created['token']}"})
            else:
                result["detail"] = response.json()["detail"][:120]
            return result

        honest = [upload(keys) for _ in range(5)]
        created = httpx.post(f"{url}/keys", content=keys, timeout=600).json()
        auth = {"Authorization": f"Bearer {created['token']}"}
        row = client.encrypt(load_breast_cancer(return_X_y=True)[0][:1].astype(np.float32))

        def predict() -> dict:
            start = time.perf_counter()
            response = httpx.post(f"{url}/clients/{created['client_id']}/predict", content=row, headers=auth,
                                  timeout=600)
            return {"status": response.status_code, "seconds": round(time.perf_counter() - start, 3)}

        first, *warm = [predict() for _ in range(4)]
        predictions = {"first": first, "median_of_3": statistics.median(r["seconds"] for r in warm),
                       "statuses": [r["status"] for r in warm]}
        uploads = {"honest upload (median of the last 4)": {
            **honest[1], "seconds": statistics.median(r["seconds"] for r in honest[1:]),
            "all_seconds": [r["seconds"] for r in honest]}}
        crafted = {craft: framing_lie(craft, ours, theirs) for craft in FRAMING_LIES}
        crafted["structure bits flipped"] = _flipped(ours)
        crafted[f"{COPIES} pointers to the bootstrap key's payload"] = amplified(ours, COPIES)
        for name, raw in crafted.items():
            log(name)
            evaluators = _evaluator_memory(process.pid)
            uploads[name] = upload(dressed(raw))
            uploads[name]["evaluators_before_after"] = [evaluators, _evaluator_memory(process.pid)]
        predictions["after_crafted_uploads"] = predict()
        after = {"health_after": httpx.get(f"{url}/health", timeout=30).status_code,
                 "honest_predictions": predictions,
                 "service_peak_memory_mb": peak_memory_mb(process.pid)}
    finally:
        process.terminate()
        process.wait(60)
    return {"service_code": code, "safety_data_limit_mb": SAFETY_DATA_LIMIT >> 20, "keys_bytes": len(ours),
            "foreign_keys_bytes": len(theirs), "uploads": uploads, **after}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], __file__, one_version)
