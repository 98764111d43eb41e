"""``Jobs``: FHE work as bounded, cancellable jobs whose results wait a while for their client.

A synchronous prediction and a submitted job are the same thing here: a ``Job`` of
samples, each sample one task of the evaluator pool. Admission is bounded by the
samples waiting or running, over all jobs and per client (a full queue is
``QueueFull``, answered 429 with ``Retry-After``). Each client has as many samples in
the pool at a time as there are evaluators, so that one client's thousand samples
interleave with another's one instead of going first. Every job has a deadline; a job
can be cancelled (its client hung up, or asked), which stops the processes running its
samples; finished jobs keep their result for a time-to-live, then are forgotten.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..container import PayloadError
from ..wire import pack_values
from .keystore import KeyStore
from .limits import Limits
from .logs import event
from .metrics import Metrics
from .penalties import Penalties
from .workers import EvaluatorCrashed, EvaluatorLost, Evaluators, EvaluatorTimeout

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["Job", "JobFailed", "Jobs", "QueueFull", "UnknownJob"]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class QueueFull(Exception):
    """The service has as much work waiting as it takes; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class UnknownJob(LookupError):
    """No job of this client has this id (or it expired)."""


@dataclass
class JobFailed:
    """Why a job failed: the HTTP status that says whose fault it is, and the reason."""

    status_code: int
    detail: str
    retry_after: Optional[int] = None


@dataclass
class Job:
    id: str
    client_id: str
    total: int
    address: Optional[str] = None  # the submitter's, for the penalty of a quarantine its bytes cause
    created: float = field(default_factory=time.monotonic)
    status: str = QUEUED
    done: int = 0
    error: Optional[JobFailed] = None
    result: Optional[bytes] = None
    finished_at: Optional[float] = None
    task: Optional[asyncio.Task] = field(default=None, repr=False)
    outputs: list = field(default_factory=list, repr=False)
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.status in (DONE, FAILED, CANCELLED)

    def describe(self) -> dict:
        described = {"job_id": self.id, "status": self.status, "done": self.done, "total": self.total}
        if self.error is not None:
            described["detail"] = self.error.detail
        return described


class Jobs:
    """The service's FHE work, run on ``evaluators`` (or on ``server``'s dask cluster)."""

    def __init__(self, server: "Server", evaluators: Evaluators, store: KeyStore, limits: Limits,
                 metrics: Metrics, penalties: Optional[Penalties] = None):
        self.server, self.evaluators, self.store, self.limits, self.metrics, self.penalties = (
            server, evaluators, store, limits, metrics, penalties)
        self._jobs: dict[str, Job] = {}
        self._queued: dict[str, int] = {}  # samples waiting or running, by client
        self._slots: dict[str, asyncio.Semaphore] = {}  # samples in the pool at a time, by client
        # the dask path waits on the cluster in a thread: a batch there is one task of ours
        self._threads = ThreadPoolExecutor(2) if server.cluster is not None else None

    @property
    def queued_samples(self) -> int:
        return sum(self._queued.values())

    # ------------------------------------------------------------ submitting
    def submit(self, client_id: str, keys_file: Path, samples: list[list[bytes]], keep: bool = True,
               address: Optional[str] = None) -> Job:
        """Queue the samples; ``keep`` registers the job for polling (the job API) until its TTL.

        ``address`` is the client's, which a quarantine caused by these samples penalizes.
        """
        self.sweep()
        n, queued, mine = len(samples), self.queued_samples, self._queued.get(client_id, 0)
        if queued + n > self.limits.max_queued_samples:
            raise QueueFull(f"the service has {queued} samples of work queued and takes at most "
                            f"{self.limits.max_queued_samples}: retry later", self._retry_after())
        if mine + n > self.limits.max_client_queued_samples:
            raise QueueFull(f"this client has {mine} samples of work queued and may have at most "
                            f"{self.limits.max_client_queued_samples}: retry once some are done", self._retry_after())
        if keep and len(self._jobs) >= self.limits.max_jobs:
            raise QueueFull(f"the service remembers {len(self._jobs)} jobs, its limit: fetch finished results "
                            "or retry later", self._retry_after())
        job = Job(id=secrets.token_urlsafe(16), client_id=client_id, total=n, outputs=[None] * n, address=address)
        self._queued[client_id] = mine + n
        self.metrics.queued_samples.set(self.queued_samples)
        run_on = self._on_cluster if self._threads is not None else self._on_evaluators
        work = run_on(job, keys_file, samples)
        job.task = asyncio.get_running_loop().create_task(self._run(job, work))
        if keep:
            self._jobs[job.id] = job
        return job

    def get(self, client_id: str, job_id: str) -> Job:
        self.sweep()
        job = self._jobs.get(job_id)
        if job is None or job.client_id != client_id:
            raise UnknownJob(f"no job {job_id[:40]!r} of this client: it never existed or its result expired "
                             f"(results are kept {self.limits.result_ttl_s:g} s)")
        return job

    def forget(self, job: Job) -> None:
        """Cancel the job if it runs, and drop it."""
        self.cancel(job, "cancelled by its client")
        self._jobs.pop(job.id, None)

    def cancel(self, job: Job, reason: str) -> None:
        if not job.is_finished:
            self._finish(job, CANCELLED, JobFailed(499, reason))
            job.task.cancel()  # stops its samples' processes

    async def wait(self, job: Job, is_disconnected: Optional[Callable] = None, poll_s: float = 0.5) -> Job:
        """Until the job ends; cancelled when ``is_disconnected()`` says its client hung up."""
        while not job.is_finished:
            try:
                await asyncio.wait_for(job.finished.wait(), poll_s)
            except asyncio.TimeoutError:
                if is_disconnected is not None and await is_disconnected():
                    self.cancel(job, "the client hung up")
        return job

    def sweep(self) -> None:
        """Forget finished jobs past their time-to-live."""
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > self.limits.result_ttl_s:
                del self._jobs[job_id]

    def quarantine(self, digest: str, cause: Exception, client_id: Optional[str] = None,
                   address: Optional[str] = None) -> None:
        """Refuse these keys (and their client, once it exists) from now on; counted, logged, and
        held against the ``address`` that sent them."""
        self.store.quarantine(digest, client_id)
        if self.penalties is not None:
            self.penalties.quarantined(address)
        self.metrics.quarantined.inc()
        event("keys_quarantined", logging.WARNING, at="run" if client_id else "upload", cause=type(cause).__name__,
              client_id=client_id)

    def close(self) -> None:
        for job in list(self._jobs.values()):
            self.cancel(job, "the service is stopping")
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ running, on the event loop
    async def _run(self, job: Job, work) -> None:
        try:
            await asyncio.wait_for(work, self.limits.job_timeout_s)
        except asyncio.CancelledError:
            return  # cancel() has finished the job
        except asyncio.TimeoutError:
            self._finish(job, FAILED, JobFailed(504, f"the job ran past the service's {self.limits.job_timeout_s:g} s "
                                                     "limit: send fewer samples per job"))
        except BaseExceptionGroup as failures:  # the first sample that failed; the others were cancelled
            self._fail(job, failures.exceptions[0])
        except Exception as error:  # noqa: BLE001: every failure becomes the job's answer
            self._fail(job, error)
        else:
            self._finish(job, DONE)

    async def _on_evaluators(self, job: Job, keys_file: Path, samples: list[list[bytes]]) -> None:
        slots = self._slots.setdefault(job.client_id, asyncio.Semaphore(self.evaluators.workers))

        async def one(i: int, values: list[bytes]) -> None:
            async with slots:
                job.outputs[i] = await self.evaluators.wait(
                    self.evaluators.run(keys_file, values, self.limits.sample_timeout_s))
            job.status, job.done = RUNNING, job.done + 1
            self.metrics.samples.inc()

        async with asyncio.TaskGroup() as group:
            for i, values in enumerate(samples):
                group.create_task(one(i, values))

    async def _on_cluster(self, job: Job, keys_file: Path, samples: list[list[bytes]]) -> None:
        # the store holds the keys themselves, checked at upload: the workers get them by their size check
        job.status = RUNNING
        job.outputs = await asyncio.wrap_future(self._threads.submit(
            self.server.cluster.run, samples, keys_file.read_bytes(), self.server._checked_size))
        job.done = job.total
        self.metrics.samples.inc(job.total)

    def _fail(self, job: Job, error: BaseException) -> None:
        if isinstance(error, PayloadError):
            failure = JobFailed(400, str(error))
        elif isinstance(error, (EvaluatorCrashed, EvaluatorTimeout)):
            # the client's own keys or ciphertexts did it: they must not do it again
            self.quarantine(self.store.digest_of(job.client_id) or "", error, job.client_id, job.address)
            failure = JobFailed(400, f"{error} on this client's bytes; its keys are quarantined: generate a new "
                                     "key set and upload it")
        elif isinstance(error, EvaluatorLost):
            failure = JobFailed(503, f"{error}: retry", retry_after=self._retry_after())
        else:
            event("job_error", logging.ERROR, exc_info=(type(error), error, error.__traceback__),
                  error=type(error).__name__)
            failure = JobFailed(500, f"internal error of the service ({type(error).__name__}); "
                                     "it is logged, the request can be retried")
        self._finish(job, FAILED, failure)

    def _finish(self, job: Job, status: str, error: Optional[JobFailed] = None) -> None:
        job.status, job.error, job.finished_at = status, error, time.monotonic()
        if status == DONE:
            job.result = pack_values("outputs", self.server.fingerprint, job.outputs)
            self.metrics.job_seconds.observe(job.finished_at - job.created)
        job.outputs = []
        event("job_finished", client_id=job.client_id, status=status, samples=job.total, done=job.done,
              seconds=round(job.finished_at - job.created, 3), http_status=error.status_code if error else 200)
        left = self._queued.pop(job.client_id) - job.total
        if left:
            self._queued[job.client_id] = left
        else:
            self._slots.pop(job.client_id, None)
        self.metrics.queued_samples.set(self.queued_samples)
        job.finished.set()

    def _retry_after(self) -> int:
        """Seconds until the queue has probably drained a little: a rough, honest hint."""
        return max(1, min(60, int(self.queued_samples / max(1, self.evaluators.workers))))
