"""The operator's ``--evaluator-memory-gb``, tried before the service takes requests.

Under a ceiling too low for the model, an evaluator does not fail cleanly: it cannot
start (its pool restarts it in a loop), or concrete-python's runtime waits for memory
its threads never get until the sample's timeout blames the client's keys and
quarantines them. One honest sample, run at startup in an evaluator under the ceiling,
turns either into one error for the operator.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ...fhe import evaluation
from ..artifacts import PathLike
from ..client import Client
from ..server import Server
from ..wire import unpack_values
from .limits import GB
from .workers import KEPT_KEY_SET_FACTOR, Evaluators

__all__ = ["check_ceiling", "check_room"]


def check_ceiling(model_dir: PathLike, server: Server, evaluators: Evaluators, memory_bytes: int,
                  keys_per_worker: int, timeout: float) -> int:
    """Refuse (``ValueError``) a ceiling under which ``evaluators`` cannot serve this model.

    Runs one sample of throwaway keys in an evaluator, then ``check_room``. Returns the
    private memory the evaluator mapped after the run, in bytes.
    """
    client = Client(model_dir)
    keys = server.check_evaluation_keys(client.evaluation_keys())
    inputs = [np.full((1, *shape), low, dtype=np.int64)  # the lowest value each input can take
              for shape, (low, _) in zip(client.model.sample_shapes, client.model.input_ranges)]
    [values] = unpack_values(client.encrypt_quantized(*inputs), "inputs", server.fingerprint)
    with tempfile.TemporaryDirectory(prefix="fheestimators-ceiling-") as folder:
        keys_file = Path(folder) / "keys"
        keys_file.write_bytes(keys)
        try:
            mapped = evaluators.outcome(evaluators.probe(keys_file, values, timeout))
        except Exception as error:  # honest keys and sample: whatever failed, the ceiling let it fail
            cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            raise ValueError(f"{_given(memory_bytes)} is too low for this model: an evaluator under it could not "
                             f"run one sample of throwaway keys ({cause}); raise it, or leave the default") from None
    check_room(memory_bytes, mapped, len(keys), keys_per_worker)
    return mapped


def check_room(memory_bytes: int, mapped: int, keys_bytes: int, keys_per_worker: int) -> None:
    """Refuse a ceiling below what an evaluator that mapped ``mapped`` after one sample needs to keep
    ``keys_per_worker`` key sets of ``keys_bytes`` and read one more (an honest read refused otherwise)."""
    needed = mapped + ((keys_per_worker - 1) * KEPT_KEY_SET_FACTOR + evaluation.HONEST_KEY_LOAD_FACTOR) * keys_bytes
    if memory_bytes < needed:
        raise ValueError(f"{_given(memory_bytes)} is too low for this model: an evaluator maps {mapped / GB:.2f} GB "
                         f"after one sample, and keeping {keys_per_worker} key sets then reading one more takes "
                         f"{needed / GB:.2f} GB; raise it, lower --keys-per-worker, or leave the default")


def _given(memory_bytes: int) -> str:
    return f"--evaluator-memory-gb {memory_bytes / GB:.2f}"
