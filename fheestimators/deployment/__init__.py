"""Deployment: the client keeps the secret key, the server computes on ciphertexts.

The top stage of the package: it imports the others, nothing imports it. Names load on
first use (PEP 562): the service's evaluator processes import a module of this package
to start, and must not pay for torch and scikit-learn, which they never use.
"""
from typing import TYPE_CHECKING

from .._lazy import lazy_names

_PUBLIC = {
    "Client": ".client",
    "PayloadError": ".container",
    "RemoteError": ".remote",
    "RemoteModel": ".remote",
    "Server": ".server",
    "fingerprint": ".artifacts",
    "save": ".artifacts",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what static tools read
    from .artifacts import fingerprint, save
    from .client import Client
    from .container import PayloadError
    from .remote import RemoteError, RemoteModel
    from .server import Server


__getattr__, __dir__ = lazy_names(__name__, _PUBLIC, globals())
