"""torch on one thread while our small networks train or compile."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's thread pool on one thread, restored afterwards.

    Training steps and the per-sample convolutions concrete-python evaluates while it
    compiles are too small to gain from more threads: the others only spin, and on a busy
    machine they make each step up to a hundred times slower (design notes, the suite's time).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
