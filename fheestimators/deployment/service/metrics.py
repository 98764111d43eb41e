"""``Metrics``: what an operator's Prometheus scrapes from ``GET /metrics``.

One registry per app (not prometheus-client's global one), so that several apps in a
process (tests, one per model) count apart. Labels never hold tokens, ids or key bytes:
routes are the app's path templates, not the paths requested.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Metrics", "RequestCounter"]


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("fheestimators_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.request_seconds = Histogram("fheestimators_request_seconds", "HTTP request latency by route template",
                                         ["route"], registry=self.registry,
                                         buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800))
        self.job_seconds = Histogram("fheestimators_job_seconds", "FHE work per finished request or job",
                                     registry=self.registry, buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600))
        self.samples = Counter("fheestimators_samples", "samples run in FHE", registry=self.registry)
        self.queued_samples = Gauge("fheestimators_queued_samples", "samples waiting or running",
                                    registry=self.registry)
        self.key_sets = Gauge("fheestimators_key_store_key_sets", "key sets in the key store", registry=self.registry)
        self.key_bytes = Gauge("fheestimators_key_store_bytes", "bytes of keys in the key store",
                               registry=self.registry)
        self.worker_deaths = Counter("fheestimators_worker_restarts", "evaluator processes replaced, by cause",
                                     ["cause"], registry=self.registry)
        self.quarantined = Counter("fheestimators_quarantined_key_sets", "key sets quarantined",
                                   registry=self.registry)
        self.penalized_requests = Counter("fheestimators_penalized_requests", "requests refused 429 unread: "
                                          "their address was refused too often", registry=self.registry)
        self.address_counts = Gauge("fheestimators_address_counts", "counts of refusals or uploads kept, "
                                    "one per client address and kind", registry=self.registry)
        self.untracked_refusals = Counter("fheestimators_untracked_refusals", "refusals and uploads not counted "
                                          "against their address: too many addresses at once",
                                          registry=self.registry)

    def asgi_app(self) -> ASGIApp:
        return make_asgi_app(self.registry)


class RequestCounter:
    """ASGI middleware counting every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # the template ("/clients/{client_id}/predict"), never the path: ids stay out of the labels
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status[0])).inc()
            self.metrics.request_seconds.labels(template).observe(time.monotonic() - start)
