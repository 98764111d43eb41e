"""A process that only evaluates a saved circuit: on serialized values, with a client's serialized keys.

The service's evaluator processes are forked from a server process that imported this
module alone, so that a replacement, after a crash, is ready at once. Everything here
runs on bytes a client chose: failures to read them raise ``ValueError``; a crash in
native code kills only this process.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from concrete import fhe

__all__ = ["check_keys", "load_keys", "run", "start"]

_state: dict = {"server": None, "keys": OrderedDict(), "keep": 2}


def start(server_zip: str, keep: int, niceness: int = 0) -> None:
    """Load the circuit once per process; keep the last ``keep`` key sets read.

    ``niceness`` lowers this process's CPU priority, so that a machine full of FHE work
    still answers the requests of the process that started it.
    """
    os.nice(niceness)
    _state.update(server=fhe.Server.load(server_zip), keep=keep)


def load_keys(keys_file: str) -> fhe.EvaluationKeys:
    """The key set in ``keys_file``, deserialized once per process."""
    cache: OrderedDict = _state["keys"]
    keys = cache.get(keys_file)
    if keys is not None:
        cache.move_to_end(keys_file)
        return keys
    keys = _read_keys(keys_file)
    cache[keys_file] = keys
    while len(cache) > _state["keep"]:
        cache.popitem(last=False)
    return keys


def check_keys(keys_file: str) -> None:
    """Whether the key set loads: refused with ``ValueError``, or a crash of this process.

    Not kept: a key set being checked need not be the next one used here, and keeping it
    would push out the keys of the clients this process is serving.
    """
    _read_keys(keys_file)


def _read_keys(keys_file: str) -> fhe.EvaluationKeys:
    try:
        return fhe.EvaluationKeys.deserialize(Path(keys_file).read_bytes())
    except RuntimeError as error:
        raise ValueError(f"the evaluation keys are damaged ({str(error).splitlines()[0][:200]})") from None


def run(keys_file: str, values: list[bytes]) -> list[bytes]:
    """The circuit on one sample's serialized inputs: its serialized outputs."""
    keys = load_keys(keys_file)
    try:
        args = [fhe.Value.deserialize(value) for value in values]
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"the ciphertexts are not this model's ({str(error).splitlines()[0][:200]})") from None
    # a failure past this point is not the client's bytes' (they were read): it propagates as such
    result = _state["server"].run(*args, evaluation_keys=keys)
    results = result if isinstance(result, tuple) else (result,)
    return [value.serialize() for value in results]
