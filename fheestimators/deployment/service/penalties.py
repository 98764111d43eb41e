"""``Penalties``: an address that keeps sending what the service refuses is refused itself, before its body is read.

Each client address (``request.client.host``; an IPv6 address by its /64) has a count
of the requests refused for what they sent (a 4xx other than 409 and 429: bad bodies,
keys, tokens or ids), of key uploads refused as too many from it (429), and of
quarantines its keys caused (each worth the whole bound). Once an address has
``Limits.max_address_refusals`` within ``Limits.address_window_s`` of its first one,
every request of it gets 429 with ``Retry-After`` until that window ends, decided from
its headers alone. A 429 for the service's own load (a full queue, uploads being read)
is not the client's fault and is not counted. The key uploads an address may start in a window are bounded
too (``max_address_uploads``).

The counts are fixed windows of the ``limits`` library, in its in-memory storage, which
forgets a window once it has ended. At most ``Limits.max_address_counts`` counts are
kept at once: past that, new addresses go uncounted (a metric says how often) until
windows end, so that a crowd of addresses cannot grow the bookkeeping without bound.
Behind a reverse proxy every client has the proxy's address unless the ASGI server is
told to trust its ``X-Forwarded-For`` (uvicorn's ``--forwarded-allow-ips``); this
module never reads that header itself.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import time
from typing import Optional

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .limits import Limits
from .logs import event
from .metrics import Metrics

__all__ = ["Penalties", "PenaltyGate", "blame", "client_address", "normalized_address"]

# where a route notes a refusal's weight when its status alone does not tell (a 429 the client caused)
BLAME = "fheestimators.blame"
# statuses of the 4xx family that are not the client's bytes at fault: a job not finished yet, load, hung up
NOT_REFUSALS = (409, 429, 499)


def client_address(scope: Scope) -> Optional[str]:
    """The address a client's refusals are counted under: its IP, an IPv6 one by its /64; None if unknown."""
    client = scope.get("client")
    if not client or not client[0]:
        return None
    return normalized_address(client[0])


def normalized_address(host: str) -> str:
    """What counts as one client: an IP address, an IPv6 one by its /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]  # not an IP (a test client's name): counted as it is
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # one subscriber is handed a whole /64 and can use any address in it
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def blame(request: Request, cost: int) -> None:
    """Count this request's answer as ``cost`` refusals of its address, whatever its status."""
    request.scope[BLAME] = cost


class Penalties:
    """Refusals and key uploads counted per client address, in windows of ``limits.address_window_s``."""

    def __init__(self, limits: Limits, metrics: Optional[Metrics] = None):
        self.limits, self.metrics = limits, metrics
        self._storage = MemoryStorage()
        self._windows = FixedWindowRateLimiter(self._storage)
        self._refusals = RateLimitItemPerSecond(limits.max_address_refusals, limits.address_window_s,
                                                namespace="refusals")
        self._uploads = RateLimitItemPerSecond(limits.max_address_uploads, limits.address_window_s,
                                               namespace="uploads")
        self._next_sweep = 0.0

    def retry_after(self, address: Optional[str]) -> Optional[int]:
        """Seconds until ``address`` is served again, or None if it is served now."""
        if address is None or self._windows.test(self._refusals, address):
            return None
        return self._seconds_left(self._refusals, address)

    def refused(self, address: Optional[str], cost: int = 1) -> None:
        """Count ``cost`` refusals against ``address``; log when that puts it over the bound."""
        if address is None or cost <= 0 or not self._has_room(self._refusals, address):
            return
        was_served = self._windows.test(self._refusals, address)
        self._windows.hit(self._refusals, address, cost=cost)
        if was_served and not self._windows.test(self._refusals, address):
            event("address_penalized", logging.WARNING, address=address,
                  seconds=self._seconds_left(self._refusals, address))
        self._gauge()

    def quarantined(self, address: Optional[str]) -> None:
        """Its keys crashed or hung an evaluator: seconds of work lost, and never an honest client's doing."""
        self.refused(address, self.limits.max_address_refusals)

    def take_upload(self, address: Optional[str]) -> Optional[int]:
        """Count a key upload of ``address``: None if it may go on, else the seconds until it may."""
        if address is None or not self._has_room(self._uploads, address):
            return None
        if self._windows.hit(self._uploads, address):
            self._gauge()
            return None
        return self._seconds_left(self._uploads, address)

    @property
    def counts(self) -> int:
        """How many counts (an address's refusals, or its uploads) are kept, ended windows not yet swept included."""
        return len(self._storage.storage)

    def _has_room(self, item: RateLimitItemPerSecond, address: str) -> bool:
        """Whether ``address`` is counted already or the table may take it."""
        if self._storage.get(item.key_for(address)) or self.counts < self.limits.max_address_counts:
            return True
        now = time.monotonic()
        if now >= self._next_sweep:  # at most once a second: a sweep reads every entry
            self._next_sweep = now + 1.0
            for key in list(self._storage.expirations):
                self._storage.get(key)  # the storage forgets a key whose window has ended when it is read
            if self.counts < self.limits.max_address_counts:
                return True
        if self.metrics is not None:
            self.metrics.untracked_refusals.inc()
        return False

    def _seconds_left(self, item: RateLimitItemPerSecond, address: str) -> int:
        reset = self._windows.get_window_stats(item, address).reset_time
        return max(1, math.ceil(reset - time.time()))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.address_counts.set(self.counts)


class PenaltyGate:
    """ASGI middleware: 429 at once for a penalized address; counts the refusals of the others."""

    def __init__(self, app: ASGIApp, penalties: Penalties, metrics: Metrics):
        self.app, self.penalties, self.metrics = app, penalties, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        wait = self.penalties.retry_after(address)
        if wait is not None:
            self.metrics.penalized_requests.inc()
            # answered from the headers: the body is never read, whatever its declared length
            limits = self.penalties.limits
            response = JSONResponse(
                {"detail": f"this address had {limits.max_address_refusals} requests refused within "
                           f"{limits.address_window_s} s (bad bodies, keys, tokens or ids, or too many key "
                           f"uploads): its requests are refused until the window ends, in {wait} s"},
                # closing the connection spares us reading the rest of the body to keep it alive
                status_code=429, headers={"Retry-After": str(wait), "Connection": "close"})
            await response(scope, receive, send)
            return
        status = [0]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, send_and_note)
        cost = scope.get(BLAME)
        if cost is None:
            cost = 1 if 400 <= status[0] < 500 and status[0] not in NOT_REFUSALS else 0
        self.penalties.refused(address, cost)
