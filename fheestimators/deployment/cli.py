"""``fheestimators serve MODEL_DIR``: the HTTP service for a saved model, on uvicorn.

Also ``python -m fheestimators.deployment serve MODEL_DIR``. Options are handed to the
worker processes through the environment variables ``service.app_from_environment``
reads, so that every worker builds the same app.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Optional, Sequence

import uvicorn

from .artifacts import CLIENT_FILE, SERVER_FILE
from .service import ENV_API_TOKEN, ENV_DASK, ENV_KEY_STORE, ENV_MAX_BODY_BYTES, ENV_MODEL_DIR

APP = "fheestimators.deployment.service:app_from_environment"
MB = 1 << 20
# a worker busy in concrete-python's C++ (loading a circuit or large keys) can miss
# uvicorn's 5 s health ping and be killed as hung: give it a minute
WORKER_HEALTHCHECK_S = 60

EPILOG = """\
The service stores the evaluation keys clients upload in the key store (default:
MODEL_DIR/key_store); give every instance serving the model the same one. It sees no
secret key. Serve it over TLS with --ssl-keyfile and --ssl-certfile (uvicorn's options)
unless it is reached through a TLS proxy: client tokens travel in headers. The API token
can also be given as the FHEESTIMATORS_API_TOKEN environment variable, which keeps it out
of the process list. With --dask, the samples of every batch run on the workers of that
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
    return serve(args, args.subparser)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the options, hand them to the workers through the environment, run uvicorn."""
    model_dir = Path(args.path)
    missing = [name for name in (CLIENT_FILE, SERVER_FILE) if not (model_dir / name).is_file()]
    if missing:
        parser.error(f"{args.path!r} is not a saved model folder (no {' or '.join(missing)}): "
                     "give the folder written by fheestimators.deployment.save")
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        parser.error("TLS needs both --ssl-keyfile and --ssl-certfile")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if args.max_body_mb is not None and args.max_body_mb <= 0:
        parser.error(f"--max-body-mb must be positive, not {args.max_body_mb}")
    os.environ[ENV_MODEL_DIR] = str(model_dir.resolve())
    if args.key_store is not None:
        os.environ[ENV_KEY_STORE] = str(Path(args.key_store).resolve())
    if args.max_body_mb is not None:
        os.environ[ENV_MAX_BODY_BYTES] = str(int(args.max_body_mb * MB))
    if args.api_token is not None:
        os.environ[ENV_API_TOKEN] = args.api_token
    if args.dask is not None:
        if importlib.util.find_spec("distributed") is None:
            parser.error("--dask needs dask's distributed: pip install 'fheestimators[dask]'")
        os.environ[ENV_DASK] = args.dask
    options = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        options["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    uvicorn.run(APP, factory=True, host=args.host, port=args.port, workers=args.workers,
                ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile, **options)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fheestimators", description="Serve models that predict on encrypted data.")
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
    serve_parser.add_argument("--workers", type=int, default=1,
                              help="worker processes; each runs requests on all cores (default: %(default)s)")
    serve_parser.add_argument("--key-store", metavar="DIR", help="folder of uploaded evaluation keys "
                                                                 "(default: PATH/key_store)")
    serve_parser.add_argument("--max-body-mb", type=float, metavar="MB",
                              help="largest request body in MB of 2**20 bytes (default: one set of "
                                   "evaluation keys for uploads, 1024 samples for predictions, plus 1 MB)")
    serve_parser.add_argument("--api-token", metavar="TOKEN",
                              help="require 'Authorization: Bearer TOKEN' to upload keys")
    serve_parser.add_argument("--dask", metavar="ADDRESS",
                              help="run the samples on the dask cluster whose scheduler is at ADDRESS "
                                   "(e.g. tcp://10.0.0.5:8786) instead of in the service's processes")
    serve_parser.add_argument("--ssl-keyfile", metavar="FILE", help="TLS private key (uvicorn's option)")
    serve_parser.add_argument("--ssl-certfile", metavar="FILE", help="TLS certificate (uvicorn's option)")
    return parser
