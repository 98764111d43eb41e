"""An HTTP service around ``Server``: clients upload evaluation keys once, then send ciphertexts.

Start it with ``fheestimators serve MODEL_DIR`` (see ``cli``), or build the app with
``create_app`` and serve it with any ASGI server. The service sees only public keys,
ciphertexts and the circuit: the secret key stays with the client, so neither the
service nor anyone reading its disk can read the data or the predictions.

Every worker process builds its own app from the same model folder and key store;
the key store on disk is the only shared state, so workers can be added or restarted
freely. With a dask cluster (``fheestimators serve MODEL_DIR --dask ADDRESS``) the
samples of every batch run on the cluster's workers instead (see ``Server``).
"""
# no "from __future__ import annotations": FastAPI reads the closures' Annotated dependencies at runtime
import asyncio
import hmac
import os
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Union

from concrete import fhe
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from . import container
from .artifacts import CLIENT_FILE, PathLike, read_artifact, versions
from .container import PayloadError
from .keystore import BadToken, KeyStore, UnknownClient
from .server import Server

if TYPE_CHECKING:  # distributed is optional
    import distributed

__all__ = ["app_from_environment", "create_app"]

ENV_MODEL_DIR = "FHEESTIMATORS_MODEL_DIR"
ENV_KEY_STORE = "FHEESTIMATORS_KEY_STORE"
ENV_MAX_BODY_BYTES = "FHEESTIMATORS_MAX_BODY_BYTES"
ENV_API_TOKEN = "FHEESTIMATORS_API_TOKEN"
ENV_DASK = "FHEESTIMATORS_DASK"
MB = 1 << 20
KEY_CACHE_SIZE = 4

# the OpenAPI description of a raw binary body, which FastAPI cannot infer from a dependency
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class Health(BaseModel):
    status: str
    fingerprint: str
    model: str


class ClientCreated(BaseModel):
    client_id: str
    token: str


class Problem(BaseModel):
    detail: str


def _problem(description: str) -> dict:
    return {"model": Problem, "description": description}


def create_app(model_dir: PathLike, key_store: Union[PathLike, KeyStore, None] = None,
               max_body_bytes: Optional[int] = None, api_token: Optional[str] = None,
               dask: Union["distributed.Client", str, None] = None) -> FastAPI:
    """The service for the model saved in ``model_dir``.

    Parameters
    ----------
    model_dir : str or os.PathLike
        The folder written by ``save``, with ``client.zip`` and ``server.zip``.
    key_store : str, os.PathLike or KeyStore, optional
        Where uploaded evaluation keys are kept; ``model_dir/key_store`` by default.
        Give every worker the same one.
    max_body_bytes : int, optional
        The largest request body. By default a little more than one set of evaluation
        keys for ``POST /keys``, and than the largest batch ``Server`` takes for
        predictions, so that no request makes a worker hold more than it needs.
    api_token : str, optional
        When given, ``POST /keys`` requires ``Authorization: Bearer <api_token>``: each
        upload costs tens of MB of disk, so a public service should not take them from
        anyone.
    dask : distributed.Client or str, optional
        Run every prediction batch on this dask cluster (a client, or a scheduler's
        address) rather than in this process; see ``Server``. Uploaded keys are still
        read once here, to refuse damaged ones at upload, but only the workers keep them.

    Returns
    -------
    fastapi.FastAPI
    """
    model_dir = Path(model_dir)
    server = Server(model_dir, dask=dask)
    client_zip = read_artifact(model_dir, CLIENT_FILE).read_bytes()
    client_header, _ = container.unpack(client_zip, "client", max_bytes=1 << 30)
    # a client.zip of another model would give clients keys the server must refuse
    server.check_client(client_header["fingerprint"])
    store = key_store if isinstance(key_store, KeyStore) else KeyStore(key_store or model_dir / "key_store")
    keys_cache = _KeyCache(server, KEY_CACHE_SIZE)
    keys_limit = max_body_bytes or server.header["evaluation_keys_bytes"] + MB
    inputs_limit = max_body_bytes or server.max_samples * sum(server.header["input_bytes"]) + MB

    api_bearer = HTTPBearer(auto_error=False, scheme_name="APIToken",
                            description="The service's API token (`fheestimators serve --api-token`), for key uploads.")
    client_bearer = HTTPBearer(auto_error=False, scheme_name="ClientToken",
                               description="The token `POST /keys` returned with the client id.")

    def require_api_token(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(api_bearer)]) -> None:
        if api_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), api_token.encode()):
            raise BadToken("this service takes evaluation keys only with its API token: "
                           "send 'Authorization: Bearer <api token>' (RemoteModel(..., token=...))")

    def authenticated_client(client_id: str, credentials: Annotated[
            Optional[HTTPAuthorizationCredentials], Depends(client_bearer)]) -> Path:
        token = credentials.credentials if credentials is not None else None
        return store.check(client_id, token, server.fingerprint)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # the dask client of a Server given an address; a thread, as it waits on the cluster
        await asyncio.to_thread(server.close)

    app = FastAPI(
        lifespan=lifespan,
        title="fheestimators: predictions on encrypted data",
        version=versions()["fheestimators"],
        description=(
            "Runs one model on ciphertexts. A client downloads `/client`, generates its keys, "
            "uploads the public evaluation keys once to `POST /keys`, then sends encrypted batches "
            "to `POST /clients/{client_id}/predict` and decrypts the answers itself. "
            "`fheestimators.deployment.RemoteModel` does all of this. The secret key never leaves "
            "the client."),
        openapi_tags=[
            {"name": "model", "description": "What model this service runs."},
            {"name": "keys", "description": "Registering a client's evaluation keys."},
            {"name": "predictions", "description": "Running the model on encrypted data."},
        ],
    )
    _add_error_handlers(app)

    @app.get("/health", tags=["model"], response_model=Health, summary="Is the service up, and with which model",
             description="The model's fingerprint, which a client artefact must carry, and its kind.")
    def health() -> Health:
        return Health(status="ok", fingerprint=server.fingerprint, model=client_header["kind_of_model"])

    @app.get("/client", tags=["model"], response_class=Response, summary="Download the client artefact",
             description="The `client.zip` to give `Client` or `RemoteModel`: encryption specs and the "
                         "model's clear ends, no weights of the network. `X-Model-Fingerprint` names the model.",
             responses={200: {"content": {"application/zip": {}}, "description": "client.zip"}})
    def client_artefact() -> Response:
        return Response(client_zip, media_type="application/zip", headers={
            "X-Model-Fingerprint": server.fingerprint,
            "Content-Disposition": 'attachment; filename="client.zip"'})

    @app.post("/keys", tags=["keys"], status_code=201, response_model=ClientCreated,
              summary="Upload evaluation keys, get a client id and token",
              description="The body is the bytes of `Client.evaluation_keys()`. They are checked to be this "
                          "model's before they are stored. Keep the token: it is shown once, and every "
                          "prediction for this client needs it.",
              dependencies=[Depends(require_api_token)], openapi_extra=BINARY_BODY,
              responses={400: _problem("Not evaluation keys of this model"),
                         401: _problem("Missing or wrong API token"),
                         413: _problem("Body larger than the service takes")})
    def upload_keys(body: Annotated[bytes, Depends(_body_reader(
            keys_limit, "the bytes of Client.evaluation_keys()"))]) -> ClientCreated:
        # a sync endpoint runs in a thread: deserializing keys takes a while
        keys = server.load_evaluation_keys(body)
        client_id, token = store.add(server.fingerprint, body)
        # with a cluster the workers read the keys again: keep the bytes they get, not the key object
        keys_cache.put(client_id, keys if server.cluster is None else body)
        return ClientCreated(client_id=client_id, token=token)

    @app.post("/clients/{client_id}/predict", tags=["predictions"], response_class=Response,
              summary="Run the model on an encrypted batch",
              description="The body is the bytes of `Client.encrypt(X)` made with this client's keys; "
                          "the answer is the encrypted predictions for `Client.decrypt`.",
              openapi_extra=BINARY_BODY,
              responses={200: {"content": {"application/octet-stream": {}}, "description": "Encrypted outputs"},
                         400: _problem("Not ciphertexts of this model"),
                         401: _problem("Missing or wrong client token"),
                         404: _problem("No such client of this model"),
                         413: _problem("Body larger than the service takes")})
    def predict(client_id: str, keys_file: Annotated[Path, Depends(authenticated_client)],
                body: Annotated[bytes, Depends(_body_reader(
                    inputs_limit, "the bytes of Client.encrypt(X)"))]) -> Response:
        # the token is checked before the body is read: strangers cannot make us buffer it
        outputs = server.run(body, keys_cache.get(client_id, keys_file))
        return Response(outputs, media_type="application/octet-stream")

    return app


def app_from_environment() -> FastAPI:
    """``create_app`` configured by environment variables, for ``uvicorn --factory``.

    Each worker process calls it: ``FHEESTIMATORS_MODEL_DIR`` (required),
    ``FHEESTIMATORS_KEY_STORE``, ``FHEESTIMATORS_MAX_BODY_BYTES``,
    ``FHEESTIMATORS_API_TOKEN`` and ``FHEESTIMATORS_DASK`` (a scheduler's address).
    The API token comes from the environment rather than
    the command line so that it need not show in the process list.
    """
    model_dir = os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise RuntimeError(f"set {ENV_MODEL_DIR} to the folder written by fheestimators.deployment.save, "
                           "or start the service with 'fheestimators serve MODEL_DIR'")
    max_body = os.environ.get(ENV_MAX_BODY_BYTES)
    try:
        max_body_bytes = int(max_body) if max_body else None
    except ValueError:
        raise RuntimeError(f"{ENV_MAX_BODY_BYTES} must be a number of bytes, not {max_body!r}") from None
    return create_app(model_dir, key_store=os.environ.get(ENV_KEY_STORE) or None,
                      max_body_bytes=max_body_bytes, api_token=os.environ.get(ENV_API_TOKEN) or None,
                      dask=os.environ.get(ENV_DASK) or None)


def _body_reader(limit: int, what: str):
    """A dependency giving the raw request body, refused past ``limit`` bytes or when empty."""

    def too_large() -> HTTPException:
        return HTTPException(413,
                             f"the request body is larger than the {limit} bytes this service takes here; "
                             "send smaller batches, or start the service with a larger --max-body-mb")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPException(400, f"Content-Length {declared[:20]!r} is not a number")
            if int(declared) > limit:
                raise too_large()
        # counted too: a chunked or lying client must not get past the limit
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large()
        if not body:
            raise HTTPException(400, f"the request body is empty: send {what}")
        return bytes(body)

    return read_body


class _KeyCache:
    """Deserialized evaluation keys of the last few clients of this process.

    Reading a key set takes a while and stored keys never change (an upload makes a new
    client), so keys are read once per process. They are checked again when read: the
    store is on disk, and concrete-python can crash on keys of another circuit. With a
    cluster, the checked bytes are kept instead: the cluster's workers read them.
    """

    def __init__(self, server: Server, size: int):
        self.server, self.size = server, size
        self._keys: OrderedDict[str, Union[fhe.EvaluationKeys, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, client_id: str, keys_file: Path) -> Union[fhe.EvaluationKeys, bytes]:
        with self._lock:
            keys = self._keys.get(client_id)
            if keys is not None:
                self._keys.move_to_end(client_id)
                return keys
        data = keys_file.read_bytes()
        if self.server.cluster is None:
            keys: Union[fhe.EvaluationKeys, bytes] = self.server.load_evaluation_keys(data)
        else:
            # read at upload; checked again here, read by the workers
            self.server.check_evaluation_keys(data)
            keys = data
        self.put(client_id, keys)
        return keys

    def put(self, client_id: str, keys: Union[fhe.EvaluationKeys, bytes]) -> None:
        with self._lock:
            self._keys[client_id] = keys
            self._keys.move_to_end(client_id)
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)


def _add_error_handlers(app: FastAPI) -> None:
    """Refusals as 4xx with a ``detail`` saying what is wrong, never a crashed worker."""

    def refuse(status_code: int, headers: Optional[dict] = None):
        async def handler(request: Request, error: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(error)}, status_code=status_code, headers=headers)
        return handler

    app.add_exception_handler(PayloadError, refuse(400))
    app.add_exception_handler(UnknownClient, refuse(404))
    app.add_exception_handler(BadToken, refuse(401, {"WWW-Authenticate": "Bearer"}))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # uvicorn logs the traceback; the client learns only that the fault is ours
        return JSONResponse({"detail": f"internal error of the service ({type(error).__name__}); "
                                       "it is logged, the request can be retried"}, status_code=500)

    app.add_exception_handler(Exception, internal_error)
