"""A process that only evaluates a saved circuit: on serialized values, with a client's serialized keys.

The service's evaluator processes are forked from a server process that imported this
module alone, so that a replacement, after a crash, is ready at once. Everything here
runs on bytes a client chose: failures to read them raise ``ValueError``; a crash in
native code kills only this process.

Memory is bounded twice (``RLIMIT_DATA``, the private writable memory a process maps):
reading a key set may grow the process by ``key_load_bytes`` of its size at most, since
crafted keys can point many times at one payload and Cap'n Proto copies each (gigabytes
from a 25 MB upload); and the whole process by the ceiling ``start`` is given.
"""
from __future__ import annotations

import os
import resource
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from concrete import fhe

__all__ = ["HONEST_KEY_LOAD_FACTOR", "KEY_LOAD_FACTOR", "KEY_LOAD_SLACK", "MEMORY_EXIT_STATUS", "check_keys",
           "key_load_bytes", "load_keys", "memory_mapped", "probe", "run", "start"]

# an honest key set's deserialization needs about 4 times its serialized size (the bytes, Cap'n Proto's
# copy, the keys; 3.9 for 25 MB, 4.0-4.5 for TinyCNN's 790 MB): a margin of 2, plus allocator slack
HONEST_KEY_LOAD_FACTOR = 4
KEY_LOAD_FACTOR = 2 * HONEST_KEY_LOAD_FACTOR
KEY_LOAD_SLACK = 128 << 20
# what a process that ran out of memory outside key loads exits with: the service restarts it, blames no one
MEMORY_EXIT_STATUS = 75

_state: dict = {"server": None, "keys": OrderedDict(), "keep": 2}


def start(server_zip: str, keep: int, niceness: int = 0, memory_bytes: Optional[int] = None) -> None:
    """Load the circuit once per process; keep the last ``keep`` key sets read.

    ``niceness`` lowers this process's CPU priority, so that a machine full of FHE work
    still answers the requests of the process that started it. ``memory_bytes``, when
    given, is this process's ceiling of private writable memory (``RLIMIT_DATA``, soft
    and hard: native code cannot raise it).
    """
    os.nice(niceness)
    if memory_bytes is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        ceiling = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, ceiling))
    _state.update(server=fhe.Server.load(server_zip), keep=keep)


def memory_mapped() -> int:
    """The private writable memory this process maps now (``VmData``), what ``RLIMIT_DATA`` bounds, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status: the evaluators need Linux")


def key_load_bytes(n_bytes: int) -> int:
    """What reading a key set of ``n_bytes`` may add to a process's memory."""
    return KEY_LOAD_FACTOR * n_bytes + KEY_LOAD_SLACK


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
    data = Path(keys_file).read_bytes()
    allowed = key_load_bytes(len(data))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    bound = memory_mapped() + allowed
    resource.setrlimit(resource.RLIMIT_DATA, (bound if hard == resource.RLIM_INFINITY else min(bound, hard), hard))
    try:
        return fhe.EvaluationKeys.deserialize(data)
    except (RuntimeError, MemoryError) as error:
        text = str(error)
        if isinstance(error, MemoryError) or "Cannot allocate memory" in text or "bad_alloc" in text:
            honest = HONEST_KEY_LOAD_FACTOR * len(data)
            raise ValueError(f"the evaluation keys need more than {allowed >> 20} MB of memory to load, where an "
                             f"honest key set of their size needs about {honest >> 20} MB: refused (crafted "
                             "to point many times at one payload?)") from None
        raise ValueError(f"the evaluation keys are damaged ({text.splitlines()[0][:200]})") from None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def run(keys_file: str, values: list[bytes]) -> list[bytes]:
    """The circuit on one sample's serialized inputs: its serialized outputs."""
    keys = load_keys(keys_file)
    try:
        args = [fhe.Value.deserialize(value) for value in values]
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"the ciphertexts are not this model's ({str(error).splitlines()[0][:200]})") from None
    # a failure past this point is not the client's bytes' (they were read): it propagates as such
    try:
        result = _state["server"].run(*args, evaluation_keys=keys)
    except MemoryError:
        # past the ceiling, this process's native state is suspect: its replacement takes the next task
        os._exit(MEMORY_EXIT_STATUS)
    results = result if isinstance(result, tuple) else (result,)
    return [value.serialize() for value in results]


def probe(keys_file: str, values: list[bytes]) -> int:
    """One honest sample run here: the private memory this process maps afterwards, in bytes."""
    run(keys_file, values)
    return memory_mapped()
