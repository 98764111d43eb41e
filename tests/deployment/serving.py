"""``fheestimators serve`` in a real process, for the tests that talk HTTP to it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SERVE = [sys.executable, "-m", "fheestimators.deployment", "serve"]
# for the modules whose attacks and honest clients all come from 127.0.0.1: no address penalty
# may stop their checks (test_penalty.py tests it)
UNPENALIZED = ("--max-address-refusals", "1000000", "--max-address-uploads", "1000000")


class Service:
    """``fheestimators serve`` in a process group of its own, restartable on the same port."""

    def __init__(self, folder: Path, key_store: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [*SERVE, str(folder), "--port", str(self.port), "--key-store", str(key_store)]
        self.process = None

    @classmethod
    def in_tmp(cls, folder: Path, tmp_path_factory, name: str) -> "Service":
        """A service of ``folder`` whose key store and log are in fresh temporary folders."""
        log = tmp_path_factory.mktemp(f"{name}_log") / "service.log"
        return cls(folder, tmp_path_factory.mktemp(f"{name}_store"), log)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *options: str) -> "Service":
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHEESTIMATORS_")}
        with open(self.log, "ab") as log:
            # a session of its own: the workers are killed with it
            self.process = subprocess.Popen([*self.command, *options], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 240.0) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the service exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"the service did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)

    def peak_memory_mb(self) -> float:
        """The service process's peak resident memory so far (VmHWM), in MB; its evaluators apart."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc: these tests need Linux")

    def evaluator_pids(self) -> list[int]:
        """The processes running FHE work: the children of the multiprocessing fork server the service started."""
        return [pid for server in _children(self.process.pid) if b"forkserver" in _command(server)
                for pid in _children(server)]


def _children(pid: int) -> list[int]:
    # every thread's children: a process's threads start them too
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served(url: str, status: int = 200) -> float:
    """Predictions the service answered with ``status``, from its Prometheus metrics."""
    return metric(url, "fheestimators_requests_total",
                  f'route="/clients/{{client_id}}/predict",status="{status}"')


def metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain ``labels``."""
    lines = httpx.get(f"{url}/metrics/").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines
               if line.split("{")[0].split(" ")[0] == name and labels in line)


def wait_for(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held; fails past ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "the condition never held"
        time.sleep(0.05)
    return time.monotonic() - start
