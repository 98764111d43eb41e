"""The HTTP service of a saved model: ``fheestimators serve MODEL_DIR``, or ``create_app`` on any ASGI server.

One module per concern: ``app`` (routes), ``body`` (bounded request bodies),
``workers`` (native work in supervised processes), ``jobs`` (bounded queue, deadlines,
results), ``keystore`` (uploaded keys on disk, quarantine), ``limits`` (every bound),
``metrics`` (Prometheus). Nothing else in the package imports it. Names load on first
use, so that ``fheestimators serve``'s own module stays light for its evaluator processes.
"""
import os
import sys
from typing import TYPE_CHECKING

from ..._lazy import lazy_names
from .limits import ENV_API_TOKEN, ENV_DASK, ENV_KEY_STORE, ENV_MODEL_DIR, Limits

_PUBLIC = {"KeyStore": ".keystore", "create_app": ".app", "default_key_store": ".app"}
__all__ = sorted([*_PUBLIC, "Limits", "app_from_environment"])

if TYPE_CHECKING:  # what static tools read
    from fastapi import FastAPI

    from .app import create_app, default_key_store
    from .keystore import KeyStore


def app_from_environment() -> "FastAPI":
    """``create_app`` configured by environment variables, for ``uvicorn --factory``.

    ``FHEESTIMATORS_MODEL_DIR`` (required), ``FHEESTIMATORS_KEY_STORE``,
    ``FHEESTIMATORS_API_TOKEN``, ``FHEESTIMATORS_DASK`` (a scheduler's address) and one
    ``FHEESTIMATORS_<LIMIT>`` per field of ``Limits``. The API token comes from the
    environment, never the command line, so that it does not show in the process list.
    """
    from .app import create_app as create
    from .logs import configure

    configure()
    model_dir = os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise RuntimeError(f"set {ENV_MODEL_DIR} to the folder written by fheestimators.deployment.save, "
                           "or start the service with 'fheestimators serve MODEL_DIR'")
    try:
        return create(model_dir, key_store=os.environ.get(ENV_KEY_STORE) or None,
                      api_token=os.environ.get(ENV_API_TOKEN), limits=Limits.from_environment(),
                      dask=os.environ.get(ENV_DASK) or None)
    except ValueError as error:  # a setting or an artefact the service cannot serve with: one line, not a traceback
        print(f"fheestimators serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__getattr__, __dir__ = lazy_names(__name__, _PUBLIC, globals())
