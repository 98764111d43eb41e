"""``Limits``: every bound the service puts on what a request may cost, declared once.

Each field is also a command-line option of ``fheestimators serve`` (``--max-clients``)
and an environment variable (``FHEESTIMATORS_MAX_CLIENTS``), both generated from this
declaration so that the three never disagree.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

__all__ = ["ENV_API_TOKEN", "ENV_DASK", "ENV_KEY_STORE", "ENV_MODEL_DIR", "ENV_PREFIX", "Limits"]

ENV_PREFIX = "FHEESTIMATORS_"
# the service's other settings, besides the limits: how ``serve`` hands them to its app
ENV_MODEL_DIR = ENV_PREFIX + "MODEL_DIR"
ENV_KEY_STORE = ENV_PREFIX + "KEY_STORE"
ENV_API_TOKEN = ENV_PREFIX + "API_TOKEN"
ENV_DASK = ENV_PREFIX + "DASK"
GB = 1 << 30


def _limit(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Limits:
    """What one service accepts; the defaults suit a 2-8 core machine on the internet.

    Every field is a hard bound: a request beyond it is refused with a 4xx, or with 429 /
    503 and ``Retry-After`` when it is only the service's present load.
    """

    workers: Optional[int] = _limit(None, "processes that run FHE work (default: one per core)")
    keys_per_worker: int = _limit(4, "evaluation key sets each worker keeps loaded (~0.5 GB each for real models)")
    max_samples: int = _limit(64, "samples in one synchronous predict request (larger batches: the job API)")
    max_job_samples: int = _limit(1024, "samples in one job")
    max_queued_samples: int = _limit(2048, "samples waiting or running over all requests and jobs")
    max_client_queued_samples: int = _limit(1024, "samples waiting or running for one client")
    sample_timeout_s: float = _limit(600.0, "seconds one sample may run before its worker is stopped")
    job_timeout_s: float = _limit(3600.0, "seconds one request or job may take in all")
    key_check_timeout_s: float = _limit(30.0, "seconds uploaded keys may take to load before they are refused")
    evaluator_memory_gb: Optional[float] = _limit(None, "GB of private memory (RLIMIT_DATA) each evaluator process "
                                                        "may map (default: sized from the model's keys)")
    max_clients: int = _limit(64, "key sets in the key store")
    max_store_gb: float = _limit(16.0, "GB of keys in the key store")
    key_ttl_s: float = _limit(7 * 86400.0, "seconds an unused key set is kept")
    result_ttl_s: float = _limit(3600.0, "seconds a finished job's result is kept")
    max_jobs: int = _limit(256, "jobs remembered (queued, running or finished)")
    max_uploads: int = _limit(2, "key uploads read at the same time")
    body_timeout_s: float = _limit(600.0, "seconds a client may take to send a request body")
    head_timeout_s: float = _limit(20.0, "seconds a connection may take to send a request's line and headers "
                                         "(from its opening, or from its first byte after an earlier request)")
    max_address_connections: int = _limit(32, "connections one client address may hold open at once")
    address_window_s: int = _limit(60, "seconds over which each client address's refusals and key uploads "
                                       "are counted")
    max_address_refusals: int = _limit(10, "requests of one address refused for what they sent (4xx) within the "
                                           "window before its every request gets 429 until the window ends")
    max_address_uploads: int = _limit(10, "key uploads one address may start within the window")
    max_address_counts: int = _limit(8192, "counts kept at once, one per client address for its refusals and "
                                           "one for its uploads (bounds their memory)")
    max_body_mb: Optional[float] = _limit(None, "largest body in MB (default: one key set for uploads, "
                                                "one request's samples for predictions, plus 1 MB)")

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None and not value > 0:
                raise ValueError(f"the limit {item.name} must be positive, not {value!r}")

    @property
    def max_store_bytes(self) -> int:
        return int(self.max_store_gb * GB)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        """The limits set as ``FHEESTIMATORS_<NAME>`` variables; the defaults elsewhere."""
        values = {}
        for item in dataclasses.fields(cls):
            text = environ.get(cls.variable(item.name))
            if text:
                values[item.name] = cls.parse(item.name, text)
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        """The variables ``from_environment`` reads back: how ``serve`` hands limits to its process."""
        return {self.variable(item.name): str(getattr(self, item.name)) for item in dataclasses.fields(self)
                if getattr(self, item.name) is not None}

    @staticmethod
    def variable(name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def parse(cls, name: str, text: str):
        declared = {item.name: item.type for item in dataclasses.fields(cls)}[name]
        kind = int if "int" in declared else float  # the annotations are strings: "Optional[int]", "float"
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"the limit {name} must be a{'n integer' if kind is int else ' number'}, "
                             f"not {text!r}") from None
