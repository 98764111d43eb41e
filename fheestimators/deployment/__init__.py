"""Deployment: the client keeps the secret key, the server computes on ciphertexts.

The top stage of the package: it imports the others, nothing imports it.
"""
from .artifacts import save
from .client import Client
from .container import PayloadError
from .remote import RemoteError, RemoteModel
from .server import Server

__all__ = ["Client", "PayloadError", "RemoteError", "RemoteModel", "Server", "save"]
