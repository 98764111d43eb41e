"""The service's events as one JSON object per line, for an operator's log pipeline.

Events carry names and numbers chosen here (a route template, a status, a duration, a
reason's class), never a request's bytes: no token, key or ciphertext can reach a log.
"""
from __future__ import annotations

import json
import logging

__all__ = ["JsonFormatter", "configure", "event", "log"]

log = logging.getLogger("fheestimators.service")


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "event": ..., <fields>}``, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname.lower(), "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def event(name: str, level: int = logging.INFO, exc_info=None, **fields) -> None:
    """Log the event ``name`` with ``fields`` (numbers and short names only)."""
    log.log(level, name, exc_info=exc_info, extra={"fields": fields})


def configure() -> None:
    """JSON lines on standard error for the service's logger, as ``fheestimators serve`` runs it."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
