"""The client's commands: ``fheestimators predict``, ``keygen`` and ``info``.

``cli.py`` parses the arguments and calls one function here per command, through ``run``,
which turns any error into one line on stderr and an exit status: these commands run in
scripts and pipelines, where a traceback is noise and the status is what is read.

The secret key never leaves the key folder (``--key-dir``). The model is pinned as
``RemoteModel`` requires, by ``--fingerprint`` or ``--model`` from the model's owner; the
client artefact of a pinned model is kept in the key folder, so that later runs with the
same folder are pinned by it and need neither. Nothing the service says is trusted
otherwise: the client artefact sets the encryption parameters.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import httpx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .artifacts import CLIENT_FILE, PathLike, _write_atomically, fingerprint, read_artifact
from .client import Client
from .clientside import ClientModel
from .container import PayloadError
from .preprocessing import describe, outline
from .remote import CLIENT_CACHE, RemoteError, RemoteModel
from .service.limits import ENV_API_TOKEN

USAGE = 2  # argparse's exit status for a command line that cannot run
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_UNKNOWN_COST = "unknown (saved by an older version)"
PIN_HELP = ("give --fingerprint FP (the model's fingerprint, from its owner: fheestimators.deployment."
            "fingerprint('model/') where it was saved) or --model PATH (its folder or client.zip) the first time "
            "this --key-dir is used; later runs with the same --key-dir need neither")


class CommandError(Exception):
    """A refusal with its one-line reason; ``status`` is the exit status (``USAGE`` for a wrong command line)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def run(command: str, action: Callable[[], None]) -> int:
    """Run ``action``; 0, or the exit status of its error, reported in one line on stderr.

    Every error is caught, not only the expected ones: a user of the command line should
    get one readable line and a non-zero status whatever went wrong, never a traceback.
    """
    try:
        action()
    except CommandError as error:
        status, message = error.status, str(error)
    except KeyboardInterrupt:
        status, message = 130, "interrupted"
    except Exception as error:
        status, message = 1, describe_error(error)
    else:
        return 0
    print(f"fheestimators {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def describe_error(error: BaseException) -> str:
    """What went wrong, for a user: the messages of this package and of the service as they are."""
    if isinstance(error, httpx.TransportError):
        try:
            where = f" {error.request.url.scheme}://{error.request.url.netloc.decode()}"
        except RuntimeError:  # no request attached
            where = ""
        return f"cannot reach the service{where}: {error or type(error).__name__}"
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"no such file or folder: {error.filename}"
    if isinstance(error, (CommandError, RemoteError, PayloadError, ValueError, TypeError, OSError)) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------- predict

def predict(url: str, key_dir: PathLike, data: str, *, proba: bool = False, out: Optional[PathLike] = None,
            model: Optional[PathLike] = None, fingerprint: Optional[str] = None, token_file: Optional[PathLike] = None,
            batch_size: Optional[int] = None) -> None:
    """Predict the rows of the CSV file ``data`` (``-``: stdin) through the service at ``url``.

    Rows are encrypted here with the key in ``key_dir`` (generated and uploaded on first
    use), computed on by the service, decrypted here; the predictions go to ``out`` as
    CSV (stdout without it). The CSV is read before connecting, so that a bad file costs
    no request.
    """
    _check_url(url)
    token = api_token(token_file)
    key_dir = Path(key_dir)
    source, pin = pinned_model(key_dir, model, fingerprint)
    frame = read_csv(data)
    with _connect(url, key_dir, source, pin, token, batch_size) as remote:
        client_model = remote.client.model
        if proba and client_model.kind != "classifier":
            raise CommandError(f"--proba needs a classifier; this model is a {client_model.kind}: drop --proba",
                               USAGE)
        X = model_inputs(frame, client_model, data)
        # at most what the service takes in one job: a larger --batch-size would only be refused
        result = _predict_batches(remote, X, proba, min(batch_size or remote.batch_size, remote.max_job_samples))
    write_csv(prediction_table(result, client_model, proba), out)


def _predict_batches(remote: RemoteModel, X: Union[pd.DataFrame, np.ndarray], proba: bool,
                     batch_size: int) -> Optional[np.ndarray]:
    """The predictions of every row, a batch (one request or job) at a time, with a progress bar on stderr."""
    method = remote.predict_proba if proba else remote.predict
    rows = len(X)
    parts = []
    # disable=None: no bar when stderr is not a terminal (a log file, a pipeline)
    with tqdm(total=rows, desc="encrypted rows", unit="row", file=sys.stderr, disable=None) as bar:
        for start in range(0, rows, batch_size):
            batch = X.iloc[start : start + batch_size] if isinstance(X, pd.DataFrame) else X[start : start + batch_size]
            part = method(batch)
            if isinstance(part, tuple):
                raise CommandError(f"the model has {len(part)} outputs: a CSV holds one; use RemoteModel from Python")
            parts.append(np.asarray(part))
            bar.update(len(batch))
    return np.concatenate(parts) if parts else None


def read_csv(data: str) -> pd.DataFrame:
    """The CSV file ``data`` (``-``: stdin), whose first row names the columns.

    A row with more cells than the header is refused: pandas would otherwise read the
    first column as the rows' index, or drop cells, and predict other rows than meant.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(sys.stdin if data == "-" else data, index_col=False)
    except FileNotFoundError:
        raise CommandError(f"no such file: {data}") from None
    except pd.errors.ParserWarning:
        raise CommandError(f"{data}: a row has more cells than the header row names columns") from None
    except (ValueError, OSError) as error:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise CommandError(f"cannot read {data} as CSV with a header row: {error}") from None


def model_inputs(frame: pd.DataFrame, client_model: ClientModel, data: str) -> Union[pd.DataFrame, np.ndarray]:
    """What to give the model for the rows of ``frame``, checked for what the CSV can get wrong.

    A model that recorded the names of its features gets the table itself (the client
    matches the columns by name); any other gets the values, column by column in the
    file's order. Cells must be numbers unless the model's own preprocessing reads them
    (an encoder of categories).
    """
    if client_model.n_inputs != 1:
        raise CommandError(f"the model takes {client_model.n_inputs} inputs; a CSV file gives one: "
                           "use RemoteModel from Python", USAGE)
    names = feature_names(client_model)
    preprocessed = client_model.preprocessing is not None
    if names is not None:
        missing = [name for name in names if name not in frame.columns]
        if missing:
            raise CommandError(f"{data} has no column {', '.join(map(repr, missing[:10]))}"
                               f"{' ...' if len(missing) > 10 else ''}: the model takes the columns "
                               f"{', '.join(names)} (in any order, named in the header row)")
        if not preprocessed:
            _check_numbers(frame, names, data)
        return frame
    expected = n_features(client_model)
    if expected is not None and frame.shape[1] != expected:
        raise CommandError(f"{data} has {frame.shape[1]} columns, the model takes {expected} features "
                           "(one column each, in the order the model was trained on)")
    _check_numbers(frame, list(frame.columns), data)
    return frame.to_numpy(dtype=np.float64)


def _check_numbers(frame: pd.DataFrame, columns: list, data: str) -> None:
    """Refuse a cell that is not a finite number, naming its column and row (1: the row after the header)."""
    for column in columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
        bad = ~np.isfinite(numbers.to_numpy())
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = values.iloc[row]
            what = "is empty" if pd.isna(cell) else f"holds {str(cell)[:40]!r}, not a finite number"
            raise CommandError(f"{data}: column {column!r} {what} in row {row + 1} (after the header)")


def prediction_table(result: Optional[np.ndarray], client_model: ClientModel, proba: bool) -> pd.DataFrame:
    """The predictions as a table: one column ``prediction`` (``prediction_<i>`` for several outputs),
    or with ``proba`` one column of probabilities per class, named by its label."""
    if proba:
        columns = [str(label) for label in client_model.classes]
        return pd.DataFrame(np.empty((0, len(columns))) if result is None else result, columns=columns)
    if result is None:
        return pd.DataFrame({"prediction": []})
    if result.ndim == 1:
        return pd.DataFrame({"prediction": result})
    flat = result.reshape(len(result), -1)
    return pd.DataFrame(flat, columns=[f"prediction_{i}" for i in range(flat.shape[1])])


def write_csv(table: pd.DataFrame, out: Optional[PathLike]) -> None:
    """``table`` as CSV to ``out``, or to stdout without it; called once every row is predicted."""
    if out is None:
        try:
            table.to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # `... | head`: the reader left; say so once, not in a traceback at exit
            _discard_stdout()
            raise CommandError("standard output was closed before every prediction was written") from None
        return
    table.to_csv(out, index=False)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush finds no broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a file descriptor (captured in tests): nothing will flush to a pipe


# ---------------------------------------------------------------- keygen

def keygen(key_dir: PathLike, *, model: Optional[PathLike] = None, fingerprint: Optional[str] = None,
           url: Optional[str] = None, token_file: Optional[PathLike] = None) -> None:
    """Generate the keys in ``key_dir`` ahead of use, and with ``url`` upload the evaluation keys.

    Key generation takes seconds to minutes, and the upload moves ~100 MB for real models:
    done here once, ``predict`` with the same ``key_dir`` reuses both.
    """
    key_dir = Path(key_dir)
    if url is None:
        if model is None:
            raise CommandError("keygen needs --model PATH (the model's folder or client.zip), or --url URL with "
                               "--fingerprint FP", USAGE)
        source, pin = pinned_model(key_dir, model, fingerprint)
        client = Client(source, key_dir=key_dir, fingerprint=pin)
        client.keygen()
        _keep_artifact(key_dir, source)
        print(f"keys of model {client.fingerprint} in {key_dir}")
        return
    _check_url(url)
    token = api_token(token_file)
    source, pin = pinned_model(key_dir, model, fingerprint)
    with _connect(url, key_dir, source, pin, token, None) as remote:
        remote.client.keygen()
        # the same upload as a first prediction's, recorded in key_dir for later runs (remote.json)
        remote.register()
        print(f"keys of model {remote.fingerprint} in {key_dir}")
        state = "uploaded to" if remote.uploads else "already registered with"
        print(f"evaluation keys {state} {remote.url} (client {remote.client_id})")


# ---------------------------------------------------------------- info

def info(path: PathLike, *, as_json: bool = False) -> None:
    """Print what the model at ``path`` takes and what it costs, read from its client artefact only."""
    description = describe_model(path)
    print(json.dumps(description, indent=2) if as_json else model_text(description))


def describe_model(path: PathLike) -> dict:
    """What a user needs to know before predicting: inputs, outputs, key and ciphertext sizes, time.

    The artefact is verified by ``Client`` (its content hashes to its fingerprint); no key
    is generated or read.
    """
    from ..fhe.cost import CircuitWork, CostModel

    client = Client(read_artifact(path, CLIENT_FILE).read_bytes())
    model, header = client.model, client.header
    shapes = [[int(n) for n in shape] for shape in model.sample_shapes]
    steps = model.preprocessing
    input_bytes = [int(n) for n in header.get("input_bytes", [])]
    description: dict[str, Any] = {
        "path": os.fspath(path),
        "kind": model.kind,
        "fingerprint": client.fingerprint,
        "n_inputs": model.n_inputs,
        "n_features": n_features(model),
        "feature_names": feature_names(model),
        "classes": None if model.classes is None else np.asarray(model.classes).tolist(),
        "preprocessing": None if steps is None else describe(steps),
        "preprocessing_outline": None if steps is None else outline(steps),
        "input_shapes": shapes,
        "evaluation_keys_bytes": header.get("evaluation_keys_bytes"),
        "input_bytes": input_bytes,
        "ciphertext_bytes_per_sample": sum(input_bytes) if input_bytes else None,
        "seconds_per_sample": None,
        "keygen_seconds": None,
        "cost_model": None,
        "versions": header.get("versions"),
    }
    work = header.get("circuit_work")
    try:
        work = CircuitWork(**work) if isinstance(work, dict) else None
    except TypeError:
        work = None  # fields of another version
    if work is None:
        description["cost_note"] = _UNKNOWN_COST
    else:
        cost = CostModel.load()
        description.update(seconds_per_sample=max(cost.execute_seconds(work), 0.0),
                           keygen_seconds=max(cost.keygen_seconds(work), 0.0), cost_model=cost.source)
    return description


def model_text(description: dict) -> str:
    """``describe_model``'s answer for a reader."""
    names, count = description["feature_names"], description["n_features"]
    if count is None:
        features = "unknown"
    else:
        features = f"{count}" + (f": {', '.join(names)}" if names else " (names not recorded: columns in order)")
    lines = [f"model:            {description['kind']}",
             f"fingerprint:      {description['fingerprint']}",
             f"features:         {features}"]
    if description["preprocessing"]:
        lines.append(f"preprocessing:    {description['preprocessing_outline']} (run here, in the clear)")
    shapes = ", ".join("(" + ", ".join(map(str, shape)) + ")" for shape in description["input_shapes"])
    lines.append(f"encrypted input:  {shapes} per sample")
    if description["classes"] is not None:
        lines.append(f"classes:          {', '.join(map(str, description['classes']))}")
    lines.append(f"evaluation keys:  {_size(description['evaluation_keys_bytes'])} (uploaded once per key folder)")
    lines.append(f"ciphertext:       {_size(description['ciphertext_bytes_per_sample'])} per sample")
    if description["seconds_per_sample"] is None:
        lines.append(f"time per sample:  {description.get('cost_note', _UNKNOWN_COST)}")
        lines.append(f"key generation:   {description.get('cost_note', _UNKNOWN_COST)}")
    else:
        source = description["cost_model"]
        lines.append(f"time per sample:  {description['seconds_per_sample']:.2f} s encrypted, on this machine "
                     f"(predicted with the {'default' if source == 'default' else source} cost model)")
        lines.append(f"key generation:   {description['keygen_seconds']:.1f} s on this machine (once per key folder)")
    return "\n".join(lines)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**20:.1f} MiB ({n} bytes)" if n >= 2**20 else f"{n / 2**10:.1f} KiB ({n} bytes)"


# ---------------------------------------------------------------- shared

def feature_names(client_model: ClientModel) -> Optional[list[str]]:
    """The names of the model's input columns, if it recorded them (models fitted on a table)."""
    names = client_model.feature_names
    return None if names is None else [str(name) for name in names]


def n_features(client_model: ClientModel) -> Optional[int]:
    """How many columns a row has for the model: its recorded names, its preprocessing's input, or its network's."""
    names = feature_names(client_model)
    if names is not None:
        return len(names)
    steps = client_model.preprocessing
    if steps is not None:
        count = getattr(steps, "n_features_in_", None)
        return int(count) if count is not None else None
    shapes = client_model.sample_shapes
    return int(shapes[0][0]) if len(shapes) == 1 and len(shapes[0]) == 1 else None


def api_token(token_file: Optional[PathLike]) -> Optional[str]:
    """The service's API token for key uploads: ``token_file``'s content, else ``$FHEESTIMATORS_API_TOKEN``.

    Never a command-line value: the process list shows those to every user of the machine.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as error:
            raise CommandError(f"cannot read the token file {os.fspath(token_file)}: {error.strerror}", USAGE) from None
    else:
        token = os.environ.get(ENV_API_TOKEN)
        if token is None:
            return None
        token = token.strip()
    if not token:
        raise CommandError("the API token is empty (--token-file or FHEESTIMATORS_API_TOKEN)", USAGE)
    return token


def pinned_model(key_dir: Path, model: Optional[PathLike],
                 pin: Optional[str]) -> tuple[Optional[bytes], Optional[str]]:
    """The client artefact (bytes, or None to download) and fingerprint that pin the model.

    From the user: ``model`` (read once, so that the bytes verified are the bytes kept)
    and ``pin``; without either, the client artefact kept in ``key_dir`` by an earlier run
    that had them. Nothing else: the service's word on the model is not a pin.
    """
    if pin is not None:
        pin = pin.strip().lower()
        if not _FINGERPRINT.fullmatch(pin):
            raise CommandError("--fingerprint takes the model's 64 hex digits (fheestimators.deployment."
                               "fingerprint('model/') where it was saved)", USAGE)
    if model is not None:
        try:
            return read_artifact(model, CLIENT_FILE).read_bytes(), pin
        except FileNotFoundError as error:
            raise CommandError(str(error), USAGE) from None
    if pin is not None:
        return None, pin
    kept = key_dir / CLIENT_CACHE
    if not kept.is_file():
        raise CommandError(f"no model pinned, and {key_dir} holds none from an earlier run: {PIN_HELP}", USAGE)
    data = kept.read_bytes()
    try:
        return data, fingerprint(data)  # recomputed from its content: checked, not claimed
    except PayloadError as error:
        raise CommandError(f"the client artefact kept in {kept} is refused ({error}): {PIN_HELP}") from None


def _connect(url: str, key_dir: Path, source: Optional[bytes], pin: Optional[str], token: Optional[str],
             batch_size: Optional[int]) -> RemoteModel:
    """The model at ``url``, pinned; a ``model`` given by the user is kept in ``key_dir`` for later runs."""
    remote = RemoteModel(url, client_dir_or_zip=source, key_dir=key_dir, fingerprint=pin, token=token,
                         batch_size=batch_size)
    try:
        _keep_artifact(key_dir, source)
    except BaseException:
        remote.close()
        raise
    return remote


def _keep_artifact(key_dir: Path, source: Optional[bytes]) -> None:
    """Keep the user's client artefact in ``key_dir`` where ``RemoteModel`` keeps a downloaded one.

    Called once the artefact is verified (``Client``), so that a later run with this key
    folder and no pin uses it.
    """
    if source is None:
        return  # downloaded and verified against the pin: RemoteModel kept it
    kept = key_dir / CLIENT_CACHE
    if kept.is_file() and kept.read_bytes() == source:
        return
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomically(kept, source)


def _check_url(url: str) -> None:
    if not re.match(r"https?://[^/]", url):
        raise CommandError(f"--url {url!r} is not an http:// or https:// address", USAGE)
