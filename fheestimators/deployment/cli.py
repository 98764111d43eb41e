"""``fheestimators serve MODEL_DIR``: the HTTP service for a saved model, on uvicorn; and
the client's commands ``predict``, ``keygen`` and ``info`` (``commands.py``).

Also ``python -m fheestimators.deployment serve MODEL_DIR``. Options are handed to the
worker processes through the environment variables ``service.app_from_environment``
reads, so that every worker builds the same app.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import os
from pathlib import Path
from typing import Optional, Sequence

from .service.limits import ENV_API_TOKEN, ENV_DASK, ENV_KEY_STORE, ENV_MODEL_DIR, Limits

APP = "fheestimators.deployment.service:app_from_environment"

EPILOG = """\
The service stores the evaluation keys clients upload in the key store (default:
~/.local/state/fheestimators/key-stores/<model>, outside the model folder); it sees no
secret key. FHE work runs in --workers processes that the service replaces when they
crash. Serve it over TLS with --ssl-keyfile and --ssl-certfile (uvicorn's options)
unless it is reached through a TLS proxy: client tokens travel in headers. On any
address but loopback it requires an API token for key uploads (--api-token-file, or the
FHEESTIMATORS_API_TOKEN environment variable; never on the command line, where the
process list shows it) unless --allow-anonymous-uploads says otherwise. Every limit
is also an environment variable, FHEESTIMATORS_<OPTION> (FHEESTIMATORS_MAX_CLIENTS).
With --dask, the samples of every batch run on the workers of that
dask cluster (pip install "fheestimators[dask]"); the cluster receives the circuit, the
evaluation keys and ciphertexts, never a secret key.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "serve":
        return serve(args, args.subparser)
    return _client_command(args)


def _client_command(args: argparse.Namespace) -> int:
    """``predict``, ``keygen`` or ``info``: any error is one line on stderr and a non-zero status."""
    # here, not at the top: pandas, httpx and concrete-python, which serve's processes do not need
    from . import commands

    if args.command == "info":
        return commands.run("info", lambda: commands.info(args.path, as_json=args.json))
    if args.command == "keygen":
        return commands.run("keygen", lambda: commands.keygen(
            args.key_dir, model=args.model, fingerprint=args.fingerprint, url=args.url, token_file=args.token_file))
    return commands.run("predict", lambda: commands.predict(
        args.url, args.key_dir, args.data, proba=args.proba, out=args.out, model=args.model,
        fingerprint=args.fingerprint, token_file=args.token_file, batch_size=args.batch_size))


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the options, hand them to the service through the environment, run uvicorn."""
    # here, not at the top: the evaluator processes import this module (their __main__) to start
    import uvicorn

    from .artifacts import CLIENT_FILE, SERVER_FILE
    from .service.connections import guarded_protocol

    model_dir = Path(args.path)
    missing = [name for name in (CLIENT_FILE, SERVER_FILE) if not (model_dir / name).is_file()]
    if missing:
        parser.error(f"{args.path!r} is not a saved model folder (no {' or '.join(missing)}): "
                     "give the folder written by fheestimators.deployment.save")
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        parser.error("TLS needs both --ssl-keyfile and --ssl-certfile")
    try:
        limits = Limits(**{item.name: getattr(args, item.name) for item in dataclasses.fields(Limits)
                           if getattr(args, item.name) is not None})
    except ValueError as error:
        parser.error(str(error))
    token = os.environ.get(ENV_API_TOKEN)
    if args.api_token_file is not None:
        token = Path(args.api_token_file).read_text().strip()
    if token is not None and not token.strip():
        parser.error("the API token is empty: an empty token would let anyone upload keys")
    if token is None and not _is_loopback(args.host) and not args.allow_anonymous_uploads:
        parser.error(f"--host {args.host} makes the service reachable from other machines: give an API token "
                     "for key uploads (--api-token-file or FHEESTIMATORS_API_TOKEN), or say "
                     "--allow-anonymous-uploads if anyone may upload keys")
    os.environ.update(limits.to_environment())
    os.environ[ENV_MODEL_DIR] = str(model_dir.resolve())
    if token is not None:
        os.environ[ENV_API_TOKEN] = token
    if args.key_store is not None:
        os.environ[ENV_KEY_STORE] = str(Path(args.key_store).resolve())
    if args.dask is not None:
        if importlib.util.find_spec("distributed") is None:
            parser.error("--dask needs dask's distributed: pip install 'fheestimators[dask]'")
        os.environ[ENV_DASK] = args.dask
    # one server process: its event loop answers HTTP, FHE work runs in its --workers processes
    uvicorn.run(APP, factory=True, host=args.host, port=args.port, ssl_keyfile=args.ssl_keyfile,
                ssl_certfile=args.ssl_certfile, timeout_graceful_shutdown=10,
                # our protocol bounds what a connection holds; a short accept queue keeps a burst of
                # connections from taking every file descriptor before they are refused (design notes)
                http=guarded_protocol(limits), backlog=128)
    return 0


def _limit_parser(name: str):
    def parse(text: str):
        try:
            return Limits.parse(name, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fheestimators",
                                     description="Serve models that predict on encrypted data, and use them.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve", help="serve a saved model over HTTP", epilog=EPILOG,
        description="Serve the model saved in PATH by fheestimators.deployment.save over HTTP.\n"
                    "Clients use fheestimators.deployment.RemoteModel.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve_parser.set_defaults(subparser=serve_parser)
    serve_parser.add_argument("path", metavar="PATH", help="the folder written by save (client.zip, server.zip)")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="address to listen on (default: %(default)s, this machine only)")
    serve_parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve_parser.add_argument("--key-store", metavar="DIR", help="folder of uploaded evaluation keys (default: "
                                                                 "~/.local/state/fheestimators/key-stores/<model>)")
    serve_parser.add_argument("--api-token-file", metavar="FILE",
                              help="require 'Authorization: Bearer <the file's content>' to upload keys")
    serve_parser.add_argument("--allow-anonymous-uploads", action="store_true",
                              help="take key uploads without an API token on a non-loopback --host")
    limits = serve_parser.add_argument_group("limits", "what requests may cost (FHEESTIMATORS_<OPTION> too)")
    for item in dataclasses.fields(Limits):
        default = f" (default: {item.default})" if item.default is not None else ""
        limits.add_argument("--" + item.name.replace("_", "-"), metavar="N", default=None,
                            type=_limit_parser(item.name),
                            help=item.metadata["help"] + default)
    serve_parser.add_argument("--dask", metavar="ADDRESS",
                              help="run the samples on the dask cluster whose scheduler is at ADDRESS "
                                   "(e.g. tcp://10.0.0.5:8786) instead of in the service's processes")
    serve_parser.add_argument("--ssl-keyfile", metavar="FILE", help="TLS private key (uvicorn's option)")
    serve_parser.add_argument("--ssl-certfile", metavar="FILE", help="TLS certificate (uvicorn's option)")
    _add_client_commands(commands)
    return parser


PIN_EPILOG = """\
The model must be pinned the first time a --key-dir is used: --fingerprint FP, the
model's fingerprint from its owner (fheestimators.deployment.fingerprint('model/') where
it was saved), or --model PATH, its folder or client.zip; not anything the service says,
for the client artefact sets the encryption parameters. The key folder keeps the secret
key, the client artefact and the registration with the service: later runs with it need
no pin and upload nothing. The API token for key uploads comes from --token-file or the
FHEESTIMATORS_API_TOKEN environment variable, never the command line.
"""


def _add_client_commands(commands: "argparse._SubParsersAction") -> None:
    """The parsers of predict, keygen and info (run by commands.py)."""
    def pinning(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--key-dir", metavar="DIR", required=True,
                         help="folder of the secret key (created if needed; keep it private)")
        sub.add_argument("--fingerprint", metavar="FP", help="the model's fingerprint, from its owner")
        sub.add_argument("--model", metavar="PATH", help="the model's folder written by save, or its client.zip")
        sub.add_argument("--token-file", metavar="FILE", help="file holding the service's API token for key uploads")

    predict = commands.add_parser(
        "predict", help="predict the rows of a CSV file through a service, encrypted", epilog=PIN_EPILOG,
        description="Encrypt the rows of a CSV file (header row: the column names) here, have the service at "
                    "--url compute on them, decrypt the predictions here and write them as CSV.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("data", metavar="DATA.csv", help="the rows to predict ('-': standard input)")
    predict.add_argument("--url", required=True, help="the service, e.g. https://models.example.com:8000")
    pinning(predict)
    predict.add_argument("--proba", action="store_true",
                         help="a classifier's probabilities, one column per class, instead of labels")
    predict.add_argument("--out", metavar="FILE", help="write the predictions there (default: standard output)")
    predict.add_argument("--batch-size", metavar="N", type=_positive_int,
                         help="rows per request (default: the most the service takes in one job)")

    keygen = commands.add_parser(
        "keygen", help="generate a client's keys, and upload them with --url", epilog=PIN_EPILOG,
        description="Generate the keys for a model in --key-dir (seconds to minutes, once); with --url also "
                    "upload the evaluation keys to that service, which a later predict with the same "
                    "--key-dir reuses. Give --model, or --url with --fingerprint.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    keygen.add_argument("--url", help="the service to upload the evaluation keys to")
    pinning(keygen)

    info = commands.add_parser(
        "info", help="what a saved model takes and costs",
        description="Describe the model saved in PATH from its client artefact: inputs, classes, key and "
                    "ciphertext sizes, predicted time per encrypted sample. Reads no key.")
    info.add_argument("path", metavar="PATH", help="the folder written by save, or its client.zip")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
