"""Request bodies read within bounds known before the first byte: size, time, and where they go.

A body is refused as soon as it passes its limit (``Content-Length`` first, then the
bytes really read: a chunked or lying client gets no further), and a client that sends
too slowly is cut off at a deadline. Large bodies (evaluation keys) go to a temporary
file rather than to memory, so that concurrent uploads cost disk, not RAM.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from fastapi import HTTPException, Request

__all__ = ["read_body", "spool_body"]


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the {limit} bytes this service takes here; "
                              "send smaller batches, or ask the operator for a larger --max-body-mb")


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > limit:
            raise _too_large(limit)


async def _chunks(request: Request, limit: int, timeout_s: float, what: str):
    """The body's chunks, refused past ``limit`` bytes or ``timeout_s`` seconds."""
    _check_declared(request, limit)
    received = 0
    stream = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body took longer than the {timeout_s:g} s this service "
                                     "waits for one") from None
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if chunk:
            yield chunk
    if received == 0:
        raise HTTPException(400, f"the request body is empty: send {what}")


async def read_body(request: Request, limit: int, timeout_s: float, what: str) -> bytes:
    """The whole body in memory: for bodies whose limit is small (ciphertexts)."""
    body = bytearray()
    async for chunk in _chunks(request, limit, timeout_s, what):
        body += chunk
    return bytes(body)


async def spool_body(request: Request, limit: int, timeout_s: float, what: str, folder: Path) -> Path:
    """The body in a new temporary file of ``folder`` (the caller removes it)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            async for chunk in _chunks(request, limit, timeout_s, what):
                file.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
