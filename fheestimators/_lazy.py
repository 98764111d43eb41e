"""Public names that load on first use (PEP 562): a process that needs one part of a package
(a client, the service's evaluators) does not import the rest (torch, scikit-learn)."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(package: str, public: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, loading ``public[name]``'s ``name`` once."""

    def __getattr__(name: str):
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(public[name], package), name)
        namespace[name] = value  # loaded once
        return value

    def __dir__() -> list:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
