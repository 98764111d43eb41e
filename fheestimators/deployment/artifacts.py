"""``save``: a compiled model as two artefacts, ``client.zip`` and ``server.zip``.

``client.zip`` holds concrete-python's client specs and the model's clear ends (see
``clientside``); ``server.zip`` holds the compiled circuit. Both carry the format
version, the versions of fheestimators and concrete-python, and the model's
fingerprint, so that each side refuses what was made for another model or format.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Union

import numpy as np
from concrete import fhe

from ..quantization.module import QuantizedModule
from . import container
from .clientside import ClientModel, _quantized_module

CLIENT_FILE = "client.zip"
SERVER_FILE = "server.zip"
SERVER_HEADER = "fheestimators.json"
PathLike = Union[str, "os.PathLike[str]"]


def versions() -> dict[str, str]:
    return {"fheestimators": version("fheestimators"), "concrete-python": version("concrete-python")}


def save(model: Any, path: PathLike) -> Path:
    """Write ``path/client.zip`` and ``path/server.zip`` for a fitted estimator or compiled module.

    Parameters
    ----------
    model : NeuralNetClassifier, NeuralNetRegressor or QuantizedModule
        Fitted (estimators) or compiled (modules).
    path : str or os.PathLike
        A folder, created if needed; artefacts already there are replaced.

    Returns
    -------
    pathlib.Path
        The folder.

    Notes
    -----
    The client artefact holds the input quantizers, the output dequantizers, the ops after
    the last table lookup and ``classes_``; the server artefact holds the circuit, which
    has the weights in the clear. Neither holds training data or keys. Saving generates a
    throwaway key set once (seconds) to record the sizes of valid keys and ciphertexts, by
    which the server refuses those of another model before touching them.
    """
    module = _quantized_module(model)
    client_model = ClientModel.from_model(model)
    circuit = deployment_circuit(module)
    specs = circuit.server.client_specs.serialize()
    model_members = client_model.to_bytes()
    digest = hashlib.sha256(circuit.mlir.encode())
    for part in (specs, model_members["model.json"], model_members["model.npz"]):
        digest.update(hashlib.sha256(part).digest())
    fingerprint = digest.hexdigest()
    sizes = _sizes(circuit, client_model)
    header = {"versions": versions(), "n_inputs": client_model.n_inputs, **sizes}

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    client_bytes = container.pack("client", fingerprint, {"client.specs.json": specs, **model_members},
                                  kind_of_model=client_model.kind, **header)
    _write_atomically(folder / CLIENT_FILE, client_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        server_zip = Path(tmp) / SERVER_FILE
        circuit.server.save(server_zip)
        with zipfile.ZipFile(server_zip, "a") as archive:
            archive.writestr(SERVER_HEADER, json.dumps(
                {"format": container.FORMAT_VERSION, "kind": "server", "fingerprint": fingerprint, **header}))
        _write_atomically(folder / SERVER_FILE, server_zip.read_bytes())
    return folder


def deployment_circuit(module: QuantizedModule) -> fhe.Circuit:
    """The module's circuit, compiled with compressed keys and inputs if it was not."""
    circuit = module.fhe_circuit
    config = circuit.configuration
    if config.compress_evaluation_keys and config.compress_input_ciphertexts:
        return circuit
    return module.compile_for_deployment()


def _sizes(circuit: fhe.Circuit, client_model: ClientModel) -> dict:
    """Byte sizes of valid evaluation keys and input ciphertexts (fixed by the circuit)."""
    client = fhe.Client(circuit.server.client_specs)
    client.keygen()
    zeros = [np.zeros((1, *shape), dtype=np.int64) + low
             for shape, (low, _) in zip(client_model.sample_shapes, client_model.input_ranges)]
    encrypted = client.encrypt(*zeros)
    encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
    return {"evaluation_keys_bytes": len(client.evaluation_keys.serialize()),
            "input_bytes": [len(value.serialize()) for value in encrypted]}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_artifact(path_or_zip: PathLike, name: str) -> Path:
    """The artefact file ``name`` in a folder written by ``save``, or the zip itself."""
    path = Path(path_or_zip)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} at {os.fspath(path_or_zip)!r}: give the folder written by save or the zip")
    return path


def read_server_header(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read(SERVER_HEADER))
    except (KeyError, zipfile.BadZipFile, ValueError) as error:
        raise container.PayloadError(
            f"{os.fspath(path)!r} is not a server artefact of fheestimators ({error})") from None
    if header.get("format") != container.FORMAT_VERSION:
        raise container.PayloadError(
            f"{os.fspath(path)!r} has format version {header.get('format')!r}; this fheestimators reads "
            f"version {container.FORMAT_VERSION}: save the model again with this version")
    return header
