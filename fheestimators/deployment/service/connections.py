"""What an open connection may hold before it has sent a request.

uvicorn keeps a connection open for as long as its request line and headers are
incomplete, and one that sends nothing at all, forever: a client that opens connections
and never finishes their headers holds one file descriptor each, and once the process's
descriptors run out nobody else can connect (design notes, "Connections that never send
a request"). ``fheestimators serve`` runs uvicorn's own h11 protocol with two bounds:

- a request's head (its line and headers) must be complete within ``head_timeout_s`` of
  the connection's opening, or of its first byte after an earlier request; a connection
  still without one then is closed. Bodies have their own deadline (``body.py``).
- one client address (an IPv6 one by its /64) holds at most ``max_address_connections``
  connections at once; a further one is closed as soon as it is accepted.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Limits
from .penalties import normalized_address

__all__ = ["guarded_protocol"]


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request heads and a cap on connections per address."""

    head_timeout_s: float
    max_address_connections: int
    open_by_address: Counter  # one per server: set by ``guarded_protocol``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: Optional[asyncio.TimerHandle] = None
        self._address = normalized_address(self.client[0]) if self.client else None
        if self._address is not None:
            self.open_by_address[self._address] += 1
            if self.open_by_address[self._address] > self.max_address_connections:
                transport.close()
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._head_deadline is not None and self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is complete

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        if self._address is not None:
            self.open_by_address[self._address] -= 1
            if self.open_by_address[self._address] <= 0:
                del self.open_by_address[self._address]
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``http=``): its own count of connections per address."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {
        "head_timeout_s": limits.head_timeout_s,
        "max_address_connections": limits.max_address_connections,
        "open_by_address": Counter(),
    })
