"""``save``: a compiled model as two artefacts, ``client.zip`` and ``server.zip``.

``client.zip`` holds concrete-python's client specs and the model's clear ends (see
``clientside``); ``server.zip`` holds the compiled circuit. Both carry the format
version, the versions of fheestimators and concrete-python, and the model's
fingerprint, so that each side refuses what was made for another model or format.

The fingerprint is ``model_fingerprint(circuit_digest, members)``: a hash of the
circuit's digest (sha256 of its MLIR, recorded in both headers) and of the client
artefact's members. A client recomputes it from what it reads, so the fingerprint in a
client artefact's header is checked, not merely claimed, and a developer who pins it
(``fingerprint("model/")``, given to ``Client`` or ``RemoteModel``) pins the encryption
parameters and the model's clear ends it covers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
from concrete import fhe

from ..quantization.module import QuantizedModule
from ..fhe.cost import CircuitWork
from . import container, preprocessing
from .clientside import ClientModel, _quantized_module

CLIENT_FILE = "client.zip"
SERVER_FILE = "server.zip"
SERVER_HEADER = "fheestimators.json"
# what a client artefact holds, in the order the fingerprint hashes them, then what it may hold
CLIENT_MEMBERS = ("client.specs.json", "model.json", "model.npz")
OPTIONAL_CLIENT_MEMBERS = (preprocessing.MEMBER,)
_FINGERPRINT_TAG = b"fheestimators client fingerprint 1\0"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PathLike = Union[str, "os.PathLike[str]"]


def versions() -> dict[str, str]:
    return {"fheestimators": version("fheestimators"), "concrete-python": version("concrete-python")}


def model_fingerprint(circuit_digest: str, members: Mapping[str, bytes]) -> str:
    """The model's fingerprint: sha256 over the circuit's digest and the client artefact's members.

    The one definition, used by ``save`` to write it and by ``Client`` to check it. Every
    member of ``CLIENT_MEMBERS``, and of ``OPTIONAL_CLIENT_MEMBERS`` present, is hashed
    with its name, so no byte of them can move, change or go without changing the
    fingerprint (a model without optional members keeps the fingerprint it had before
    they existed).
    """
    if not isinstance(circuit_digest, str) or not _SHA256_HEX.fullmatch(circuit_digest):
        raise container.PayloadError("the client artefact's header has no valid circuit_digest (64 hex digits): "
                                     "it was saved by an older fheestimators or altered; save the model again")
    missing = [name for name in CLIENT_MEMBERS if name not in members]
    if missing:
        raise container.PayloadError(f"the client artefact lacks {', '.join(missing)}")
    digest = hashlib.sha256(_FINGERPRINT_TAG + circuit_digest.encode("ascii"))
    for name in CLIENT_MEMBERS + tuple(name for name in OPTIONAL_CLIENT_MEMBERS if name in members):
        digest.update(name.encode("ascii") + b"\0" + hashlib.sha256(members[name]).digest())
    return digest.hexdigest()


def verified_fingerprint(header: Mapping[str, Any], members: Mapping[str, bytes]) -> str:
    """The fingerprint recomputed from a client artefact's bytes, refused unless its header says the same.

    Reads no member beyond hashing it: call it before any parser sees them.
    """
    unexpected = sorted(set(members) - set(CLIENT_MEMBERS) - set(OPTIONAL_CLIENT_MEMBERS))
    if unexpected:
        raise container.PayloadError(f"the client artefact holds members save never writes ({unexpected[:3]}): "
                                     "it was altered")
    recomputed = model_fingerprint(header.get("circuit_digest"), members)
    claimed = header.get("fingerprint")
    if claimed != recomputed:
        raise container.PayloadError(
            f"the client artefact's header names model {str(claimed)[:64]}, but its content hashes to "
            f"{recomputed}: the artefact was altered after save (or damaged); get it again from the model's owner")
    return recomputed


def fingerprint(model_dir_or_client_zip: Union[PathLike, bytes]) -> str:
    """The fingerprint of a saved model: what to give ``RemoteModel(..., fingerprint=...)`` or ``Client``.

    Parameters
    ----------
    model_dir_or_client_zip : str, os.PathLike or bytes
        The folder written by ``save``, its ``client.zip``, or that file's bytes.

    Returns
    -------
    str
        64 hex digits, recomputed from the artefact (which is refused with ``PayloadError``
        if its header says otherwise). ``Client(...).fingerprint`` is the same value.
        Hand it to the model's users out of band (not through the service they will use),
        so that a service cannot substitute another model or weaker encryption parameters.
    """
    data = (model_dir_or_client_zip if isinstance(model_dir_or_client_zip, (bytes, bytearray, memoryview))
            else read_artifact(model_dir_or_client_zip, CLIENT_FILE).read_bytes())
    header, members = container.unpack(data, "client", max_bytes=1 << 30)
    return verified_fingerprint(header, members)


def _major_minor(text: Any) -> Union[tuple[int, int], None]:
    match = re.match(r"(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return (int(match[1]), int(match[2])) if match else None


def check_versions(recorded: Any, what: str) -> None:
    """Refuse what was made with another major.minor of concrete-python than the installed one.

    ``recorded`` is the ``versions`` field of a header (``{"concrete-python": "2.11.0", ...}``);
    ``what`` names the thing for the message (``"the client artefact"``, ``"the evaluation keys"``).
    The formats of specs, keys and ciphertexts, and the parameters the optimizer chooses,
    may change between minor versions of concrete-python.
    """
    installed = versions()["concrete-python"]
    made_with = recorded.get("concrete-python") if isinstance(recorded, Mapping) else None
    if _major_minor(made_with) is None:
        raise container.PayloadError(f"{what} records no concrete-python version: it was made by an older "
                                     f"fheestimators or altered; make it again with concrete-python {installed}")
    if _major_minor(made_with) != _major_minor(installed):
        wanted = "%d.%d" % _major_minor(made_with)
        raise container.PayloadError(
            f"{what}: made with concrete-python {str(made_with)[:40]}, but this process has concrete-python "
            f"{installed}, and their major.minor must match. Make it again with concrete-python {installed} (save "
            f"the model again for an artefact, generate new keys for keys), or install concrete-python=={wanted}.* "
            "here")


def save(model: Any, path: PathLike) -> Path:
    """Write ``path/client.zip`` and ``path/server.zip`` for a fitted estimator or compiled module.

    Parameters
    ----------
    model : NeuralNetClassifier, NeuralNetRegressor, QuantizedModule or Pipeline
        Fitted (estimators) or compiled (modules); or a fitted scikit-learn ``Pipeline``
        ending with one of them, whose leading steps (scalers, imputers, encoders, a
        ``ColumnTransformer``: ``preprocessing.TRUSTED``) the client runs in the clear
        before encrypting. They travel in the client artefact as ``skops.io`` bytes, and
        the fingerprint covers them.
    path : str or os.PathLike
        A folder, created if needed; artefacts already there are replaced.

    Returns
    -------
    pathlib.Path
        The folder. ``fingerprint(folder)`` is the model's fingerprint: give it to the
        model's users out of band, for ``RemoteModel(url, fingerprint=...)``.

    Notes
    -----
    The client artefact holds the preprocessing, the input quantizers, the output
    dequantizers, the ops after the last table lookup, ``classes_`` and the fitted column
    names; the server artefact holds the circuit, which
    has the weights in the clear. Neither holds training data or keys. Saving generates a
    throwaway key set once (seconds) to record the sizes of valid keys and ciphertexts, by
    which the server refuses those of another model before touching them.
    """
    module = _quantized_module(preprocessing.split(model)[1])
    client_model = ClientModel.from_model(model)
    circuit = deployment_circuit(module)
    specs = circuit.server.client_specs.serialize()
    members = {"client.specs.json": specs, **client_model.to_bytes()}
    circuit_digest = hashlib.sha256(circuit.mlir.encode()).hexdigest()
    model_id = model_fingerprint(circuit_digest, members)
    sizes = _sizes(circuit, client_model)
    # what the cost model needs to predict latency and key generation on the reader's machine
    work = dataclasses.asdict(CircuitWork.of(circuit))
    header = {"versions": versions(), "circuit_digest": circuit_digest, "n_inputs": client_model.n_inputs,
              "circuit_work": work, **sizes}

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    client_bytes = container.pack("client", model_id, members, kind_of_model=client_model.kind, **header)
    _write_atomically(folder / CLIENT_FILE, client_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        server_zip = Path(tmp) / SERVER_FILE
        circuit.server.save(server_zip)
        with zipfile.ZipFile(server_zip, "a") as archive:
            archive.writestr(SERVER_HEADER, json.dumps(
                {"format": container.FORMAT_VERSION, "kind": "server", "fingerprint": model_id, **header}))
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
