"""``Evaluators``: concrete-python on untrusted bytes, in processes the service supervises.

Deserializing evaluation keys and running the circuit are native code fed with bytes a
client chose; crafted keys can make them crash (a segmentation fault) or spin for
minutes. They therefore run in a pebble process pool: a crash costs the one task that
caused it (``ProcessExpired``), a task past its timeout has its process stopped, and
the pool starts a fresh process either way. The service's own process never touches
those bytes with native code, so it keeps answering.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Optional

from pebble import ProcessExpired, ProcessPool

from ...fhe import evaluation
from ..container import PayloadError

__all__ = ["EvaluatorCrashed", "EvaluatorLost", "Evaluators", "EvaluatorTimeout", "default_memory_bytes"]

EVALUATOR_NICENESS = 5
# deaths that the bytes being processed cause; SIGKILL is the OOM killer or an operator
INPUT_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


# measured on a model of 25 MB of keys: an evaluator maps 1.55 GB after its first run (0.38 GB resident), a
# thread stack more per OpenMP thread (one per core), then 154 MB per key set it keeps and has run with (6 times
# their serialized size); the default leaves about twice that
BASE_MEMORY = 2 << 30
CORE_MEMORY = 32 << 20
KEPT_KEY_SET_FACTOR = 6  # the measured 154 MB per kept key set: what a chosen ceiling must leave room for
KEY_SET_MEMORY_FACTOR = 16


def default_memory_bytes(keys_bytes: int, keys_per_worker: int) -> int:
    """Each evaluator's default memory ceiling, holding ``keys_per_worker`` key sets of ``keys_bytes`` bytes
    serialized and reading one more: about twice what an evaluator of the measured model maps then."""
    return (BASE_MEMORY + CORE_MEMORY * (os.cpu_count() or 1) + KEY_SET_MEMORY_FACTOR * keys_bytes * keys_per_worker
            + evaluation.key_load_bytes(keys_bytes))


class EvaluatorCrashed(Exception):
    """The task's input killed its process (a signal such as SIGSEGV): the input is to blame."""


class EvaluatorLost(Exception):
    """The task's process died of something else (SIGKILL: memory, an operator): retry later."""


class EvaluatorTimeout(Exception):
    """The task ran past its timeout; its process was stopped."""


class Evaluators:
    """A pool of processes, each holding the circuit and the last few clients' keys.

    Parameters
    ----------
    server_zip : str or os.PathLike
        The server artefact, loaded once by each process.
    workers : int, optional
        Processes; one per core by default.
    keys_per_worker : int
        Deserialized key sets each process keeps, by keys file.
    on_restart : callable, optional
        Called with the failure's class name whenever a process had to be replaced.
    memory_bytes : int, optional
        Each process's ceiling of private writable memory (``RLIMIT_DATA``); none by default.
        Apart from it, reading a key set may only grow a process by ``key_load_bytes`` of its size.
    """

    def __init__(self, server_zip: "os.PathLike[str] | str", workers: Optional[int] = None, keys_per_worker: int = 4,
                 on_restart: Optional[Callable[[str], None]] = None, memory_bytes: Optional[int] = None):
        self.workers = workers or os.cpu_count() or 1
        self._on_restart = on_restart or (lambda cause: None)
        # below the HTTP process's priority: health checks and refusals stay fast on a busy machine
        self._initargs = (os.fspath(server_zip), keys_per_worker, EVALUATOR_NICENESS, memory_bytes)
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPool:
        # forked from a server process that has imported concrete-python and nothing else (no thread
        # of ours): a replacement is ready in ~0.03 s, against ~1.5-7 s for a fresh interpreter
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([evaluation.__name__])
        return ProcessPool(max_workers=self.workers, initializer=evaluation.start, initargs=self._initargs,
                           context=context)

    def _schedule(self, function, args: tuple, timeout: float) -> Future:
        with self._lock:
            # pebble gives up on the whole pool when a process dies with no task of its own (an idle
            # evaluator killed from outside): its tasks fail as EvaluatorLost, a new pool takes the next
            if not self._pool.active:
                self._pool.stop()
                self._pool = self._new_pool()
            return self._pool.schedule(function, args, timeout=timeout)

    def check_keys(self, keys_file: Path, timeout: float) -> Future:
        """Deserialize a key set in a worker: a future of ``None``, or of the refusal."""
        return self._schedule(evaluation.check_keys, (os.fspath(keys_file),), timeout)

    def run(self, keys_file: Path, values: list[bytes], timeout: float) -> Future:
        """One sample: a future of its serialized outputs."""
        return self._schedule(evaluation.run, (os.fspath(keys_file), values), timeout)

    def probe(self, keys_file: Path, values: list[bytes], timeout: float) -> Future:
        """One honest sample: a future of the private memory its process maps afterwards."""
        return self._schedule(evaluation.probe, (os.fspath(keys_file), values), timeout)

    def outcome(self, future: Future):
        """The future's result, its failure translated: ``EvaluatorCrashed``, ``EvaluatorLost``,
        ``EvaluatorTimeout``, or ``PayloadError`` for bytes the worker could not read."""
        try:
            return future.result()
        except ValueError as unreadable:  # raised by the worker's own checks: the client's bytes
            raise PayloadError(str(unreadable)) from None
        except ProcessExpired as death:
            if death.exitcode == evaluation.MEMORY_EXIT_STATUS:
                failure = EvaluatorLost("the evaluator ran out of memory (its ceiling: --evaluator-memory-gb)")
            elif -death.exitcode in INPUT_SIGNALS:
                failure = EvaluatorCrashed(f"the evaluator died of {_signal_name(death.exitcode)}")
            else:
                failure = EvaluatorLost(f"the evaluator died ({_signal_name(death.exitcode)})")
        except BrokenProcessPool:
            failure = EvaluatorLost("an evaluator was killed from outside and its pool restarted")
        except FutureTimeout:  # pebble stops the process
            failure = EvaluatorTimeout("the evaluator ran past its timeout")
        self._on_restart(type(failure).__name__)
        raise failure

    async def wait(self, future: Future):
        """``outcome`` of ``future``, awaited; the task is stopped if the awaiting coroutine is cancelled."""
        try:
            await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # pebble stops the process running it
            raise
        except Exception:  # noqa: BLE001: translated by outcome just below
            pass
        return self.outcome(future)

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=30)


def _signal_name(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            pass
    return f"exit status {exitcode}"
