"""The HTTP routes around a saved model: keys in once, ciphertexts in, ciphertexts out.

The service sees only public keys, ciphertexts and the circuit: the secret key stays
with the client, so neither the service nor anyone reading its disk can read the data
or the predictions. Every byte of a request is hostile until parsed: bodies are bounded
(``body``), native work on them runs in supervised processes (``workers``), work is
admitted into a bounded queue with deadlines (``jobs``), and the key store is bounded
(``keystore``); an address whose requests keep being refused is refused unread
(``penalties``). ``Limits`` holds every bound.
"""
# no "from __future__ import annotations": FastAPI reads the closures' Annotated dependencies at runtime
import asyncio
import hmac
import logging
import mmap
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from .. import container
from ..artifacts import CLIENT_FILE, SERVER_FILE, PathLike, read_artifact, verified_fingerprint, versions
from ..container import PayloadError
from ..server import Server
from ..wire import unpack_values
from .body import read_body, spool_body
from .ceiling import check_ceiling
from .jobs import DONE, Job, JobFailed, Jobs, QueueFull, UnknownJob
from .keystore import BadToken, KeyStore, Quarantined, StoreFull, UnknownClient, keys_digest
from .limits import GB, Limits
from .logs import event
from .metrics import Metrics, RequestCounter
from .penalties import Penalties, PenaltyGate, blame, client_address
from .workers import EvaluatorCrashed, EvaluatorLost, Evaluators, EvaluatorTimeout, default_memory_bytes

if TYPE_CHECKING:  # distributed is optional
    import distributed

__all__ = ["create_app"]

MB = 1 << 20
# how long the startup trial of a chosen --evaluator-memory-gb may run one sample (or the sample timeout)
CEILING_TIMEOUT_S = 120.0

# the OpenAPI description of a raw binary body, which FastAPI cannot infer from a dependency
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class Health(BaseModel):
    status: str
    fingerprint: str
    model: str
    max_samples: int
    max_job_samples: int


class ClientCreated(BaseModel):
    client_id: str
    token: str


class JobStatus(BaseModel):
    job_id: str
    status: str
    done: int
    total: int
    detail: Optional[str] = None


class Problem(BaseModel):
    detail: str


def _problem(description: str) -> dict:
    return {"model": Problem, "description": description}


class Refused(Exception):
    """A refusal with its HTTP status, for the error handler."""

    def __init__(self, failure: JobFailed):
        super().__init__(failure.detail)
        self.failure = failure


def create_app(model_dir: PathLike, key_store: Union[PathLike, KeyStore, None] = None,
               api_token: Optional[str] = None, limits: Optional[Limits] = None,
               dask: Union["distributed.Client", str, None] = None) -> FastAPI:
    """The service for the model saved in ``model_dir``.

    Parameters
    ----------
    model_dir : str or os.PathLike
        The folder written by ``save``, with the client and server artefacts.
    key_store : str, os.PathLike or KeyStore, optional
        Where uploaded evaluation keys are kept; by default a folder of the user's state
        directory named after the model, outside ``model_dir`` (which holds the circuit's
        native code the service loads: uploads must never land beside it).
    api_token : str, optional
        When given, ``POST /keys`` requires ``Authorization: Bearer <api_token>``. Each
        upload costs tens of MB of disk and a key check: a service reachable from other
        machines should not take them from anyone (``fheestimators serve`` insists).
    limits : Limits, optional
        Every bound on what requests may cost; ``Limits()`` by default.
    dask : distributed.Client or str, optional
        Run every batch on this dask cluster (a client, or a scheduler's address) rather
        than in this machine's evaluator processes; see ``Server``. Uploaded keys are
        still checked here, in an evaluator process.

    Returns
    -------
    fastapi.FastAPI
    """
    if api_token is not None and not api_token.strip():
        raise ValueError("the API token is empty: give a real one, or none to take anonymous key uploads")
    limits = limits or Limits()
    model_dir = Path(model_dir)
    server = Server(model_dir, max_samples=limits.max_job_samples, dask=dask)
    client_bytes = read_artifact(model_dir, CLIENT_FILE).read_bytes()
    client_header, client_members = container.unpack(client_bytes, "client", max_bytes=1 << 30)
    # a client artefact of another model (or altered) would give clients keys the server must refuse
    server.check_client(verified_fingerprint(client_header, client_members))
    if not isinstance(key_store, KeyStore):
        key_store = KeyStore(key_store or default_key_store(server.fingerprint), max_clients=limits.max_clients,
                             max_bytes=limits.max_store_bytes)
    store = key_store
    store.expire(limits.key_ttl_s)
    metrics = Metrics()

    def restarted(cause: str) -> None:
        metrics.worker_deaths.labels(cause=cause).inc()
        event("evaluator_restarted", logging.WARNING, cause=cause)

    # with a cluster, the evaluators here only check uploaded keys: one is enough
    keys_size = server.header["evaluation_keys_bytes"]
    memory = (int(limits.evaluator_memory_gb * GB) if limits.evaluator_memory_gb is not None
              else default_memory_bytes(keys_size, limits.keys_per_worker))
    evaluators = Evaluators(read_artifact(model_dir, SERVER_FILE), 1 if dask else limits.workers,
                            limits.keys_per_worker, on_restart=restarted, memory_bytes=memory)
    if limits.evaluator_memory_gb is not None:  # the default is sized from measurements; a choice is tried
        try:
            check_ceiling(model_dir, server, evaluators, memory, limits.keys_per_worker,
                          min(limits.sample_timeout_s, CEILING_TIMEOUT_S))
        except BaseException:
            evaluators.close()
            raise
    penalties = Penalties(limits, metrics)
    jobs = Jobs(server, evaluators, store, limits, metrics, penalties)
    sample_bytes = sum(server.header["input_bytes"])
    max_body = int(limits.max_body_mb * MB) if limits.max_body_mb is not None else None
    keys_limit = max_body or keys_size + MB
    predict_limit = max_body or limits.max_samples * sample_bytes + MB
    job_limit = max_body or limits.max_job_samples * sample_bytes + MB
    uploads = asyncio.Semaphore(limits.max_uploads)
    incoming = store.root / ".incoming"
    incoming.mkdir(mode=0o700, exist_ok=True)
    for stale in incoming.iterdir():  # bodies of uploads a killed process never finished
        stale.unlink(missing_ok=True)

    api_bearer = HTTPBearer(auto_error=False, scheme_name="APIToken",
                            description="The service's API token, for key uploads.")
    client_bearer = HTTPBearer(auto_error=False, scheme_name="ClientToken",
                               description="The token `POST /keys` returned with the client id.")

    def require_api_token(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(api_bearer)]) -> None:
        if api_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), api_token.encode()):
            raise BadToken("this service takes evaluation keys only with its API token: "
                           "send 'Authorization: Bearer <api token>' (RemoteModel(..., token=...))")

    def client_token(credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(client_bearer)]
                     ) -> Optional[str]:
        return credentials.credentials if credentials is not None else None

    def authenticated_client(client_id: str, token: Annotated[Optional[str], Depends(client_token)]) -> Path:
        keys_file = store.check(client_id, token, server.fingerprint)
        store.touch(client_id)
        return keys_file

    async def samples_of(request: Request, limit: int, max_samples: int) -> list[list[bytes]]:
        body = await read_body(request, limit, limits.body_timeout_s, "the bytes of Client.encrypt(X)")
        return unpack_values(body, "inputs", server.fingerprint, n_args=server.header["n_inputs"],
                             sizes=server.header["input_bytes"], max_samples=max_samples)

    def submit(request: Request, client_id: str, keys_file: Path, samples: list[list[bytes]], keep: bool) -> Job:
        try:
            return jobs.submit(client_id, keys_file, samples, keep=keep, address=client_address(request.scope))
        except QueueFull as full:
            raise Refused(JobFailed(429, str(full), full.retry_after)) from None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()
        await asyncio.to_thread(evaluators.close)
        # the dask client of a Server given an address; a thread, as it waits on the cluster
        await asyncio.to_thread(server.close)

    app = FastAPI(
        lifespan=lifespan,
        title="fheestimators: predictions on encrypted data",
        version=versions()["fheestimators"],
        description=(
            "Runs one model on ciphertexts. A client gets the client artefact from the model's developer, "
            "generates its keys, uploads the public evaluation keys once to `POST /keys`, then sends encrypted "
            "batches to `POST /clients/{client_id}/predict` (or, for long ones, `POST /clients/{client_id}/jobs`) "
            "and decrypts the answers itself. `fheestimators.deployment.RemoteModel` does all of this. "
            "The secret key never leaves the client."),
        openapi_tags=[
            {"name": "model", "description": "What model this service runs, and how it fares."},
            {"name": "keys", "description": "Registering and removing a client's evaluation keys."},
            {"name": "predictions", "description": "Running the model on encrypted data."},
            {"name": "jobs", "description": "Long batches: submit, poll, fetch."},
        ],
    )
    _add_error_handlers(app)
    # inside the counter, so that the requests it refuses are counted too
    app.add_middleware(PenaltyGate, penalties=penalties, metrics=metrics)
    app.add_middleware(RequestCounter, metrics=metrics)
    app.mount("/metrics", metrics.asgi_app())

    @app.get("/health", tags=["model"], response_model=Health, summary="Is the service up, and with which model",
             description="The model's fingerprint, which a client artefact must carry, its kind, and the most "
                         "samples a predict request and a job take.")
    async def health() -> Health:
        # async: answered by the event loop, never queued behind FHE work
        return Health(status="ok", fingerprint=server.fingerprint, model=client_header["kind_of_model"],
                      max_samples=limits.max_samples, max_job_samples=limits.max_job_samples)

    @app.get("/client", tags=["model"], response_class=Response, summary="Download the client artefact",
             description="The client artefact: encryption specs and the model's clear ends, no weights of the "
                         "network. A client should trust it only if it verifies to the fingerprint its developer "
                         "gave out of band. `X-Model-Fingerprint` names the model.",
             responses={200: {"content": {"application/octet-stream": {}}, "description": "the client artefact"}})
    async def client_artefact() -> Response:
        return Response(client_bytes, media_type="application/octet-stream", headers={
            "X-Model-Fingerprint": server.fingerprint,
            "Content-Disposition": f'attachment; filename="{CLIENT_FILE}"'})

    @app.post("/keys", tags=["keys"], status_code=201, response_model=ClientCreated,
              summary="Upload evaluation keys, get a client id and token",
              description="The body is the bytes of `Client.evaluation_keys()`. They are checked to be this "
                          "model's, and loaded once in an evaluator process, before they are stored. Keep the "
                          "token: it is shown once, and every prediction for this client needs it.",
              dependencies=[Depends(require_api_token)], openapi_extra=BINARY_BODY,
              responses={400: _problem("Not evaluation keys of this model, or keys that crashed or hung it"),
                         401: _problem("Missing or wrong API token"),
                         413: _problem("Body larger than the service takes"),
                         429: _problem("Too many uploads at once, or from this address: retry after "
                                       "Retry-After seconds"),
                         507: _problem("The key store is full")})
    async def upload_keys(request: Request) -> ClientCreated:
        address = client_address(request.scope)
        if uploads.locked():  # the service's load, not this client's doing: not counted against its address
            raise Refused(JobFailed(429, f"the service reads {limits.max_uploads} key uploads at a time: retry",
                                    retry_after=5))
        wait = penalties.take_upload(address)
        if wait is not None:
            blame(request, 1)
            raise Refused(JobFailed(429, f"this address started {limits.max_address_uploads} key uploads within "
                                         f"{limits.address_window_s} s, the most it may: retry", retry_after=wait))
        async with uploads:
            start = time.monotonic()
            spooled = await spool_body(request, keys_limit, limits.body_timeout_s,
                                       "the bytes of Client.evaluation_keys()", incoming)
            try:
                client_id, digest = await asyncio.to_thread(store_upload, spooled)
            finally:
                spooled.unlink(missing_ok=True)
            try:
                await evaluators.wait(evaluators.check_keys(store.keys_file(client_id), limits.key_check_timeout_s))
            except (EvaluatorCrashed, EvaluatorTimeout) as error:
                store.discard(client_id)
                jobs.quarantine(digest, error, address=address)
                raise Refused(JobFailed(400, f"{error} while loading these evaluation keys: they are refused, "
                                             "now and if sent again")) from None
            except EvaluatorLost as error:
                store.discard(client_id)
                raise Refused(JobFailed(503, f"{error} while loading the keys: retry", retry_after=5)) from None
            except BaseException:
                store.discard(client_id)
                raise
        update_store_gauges()
        token = store.activate(client_id)
        event("keys_stored", client_id=client_id, seconds=round(time.monotonic() - start, 3))
        return ClientCreated(client_id=client_id, token=token)

    def store_upload(spooled: Path) -> tuple[str, str]:
        """Parse the spooled keys container, refuse quarantined keys, reserve a client for them."""
        store.expire(limits.key_ttl_s)
        with open(spooled, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            keys = server.check_evaluation_keys(mapped)
        digest = keys_digest(keys)
        if store.is_quarantined(digest):
            raise Quarantined("these evaluation keys crashed or hung the evaluator before; they are refused: "
                              "generate a new key set")
        return store.reserve(server.fingerprint, keys), digest

    def update_store_gauges() -> None:
        n_clients, n_bytes = store.usage()
        metrics.key_sets.set(n_clients)
        metrics.key_bytes.set(n_bytes)

    @app.delete("/clients/{client_id}", tags=["keys"], status_code=204, response_class=Response,
                summary="Remove this client's evaluation keys",
                responses={401: _problem("Missing or wrong client token"), 404: _problem("No such client")})
    async def delete_client(client_id: str, token: Annotated[Optional[str], Depends(client_token)]) -> Response:
        await asyncio.to_thread(store.delete, client_id, token)
        update_store_gauges()
        return Response(status_code=204)

    @app.post("/clients/{client_id}/predict", tags=["predictions"], response_class=Response,
              summary="Run the model on an encrypted batch",
              description="The body is the bytes of `Client.encrypt(X)` made with this client's keys, at most "
                          f"{limits.max_samples} samples; the answer is the encrypted predictions for "
                          "`Client.decrypt`. Larger batches go to the job API. Work stops if the client hangs up.",
              openapi_extra=BINARY_BODY,
              responses={200: {"content": {"application/octet-stream": {}}, "description": "Encrypted outputs"},
                         400: _problem("Not ciphertexts of this model, or bytes that crashed the evaluator"),
                         401: _problem("Missing or wrong client token"),
                         403: _problem("This client's keys are quarantined"),
                         404: _problem("No such client of this model"),
                         413: _problem("Body larger than the service takes"),
                         429: _problem("The work queue is full: retry after Retry-After seconds"),
                         504: _problem("The batch ran past the service's time limit")})
    async def predict(client_id: str, request: Request,
                      keys_file: Annotated[Path, Depends(authenticated_client)]) -> Response:
        # the token is checked before the body is read: strangers cannot make us buffer it
        samples = await samples_of(request, predict_limit, limits.max_samples)
        job = await jobs.wait(submit(request, client_id, keys_file, samples, keep=False), request.is_disconnected)
        if job.status != DONE:
            raise Refused(job.error)
        return Response(job.result, media_type="application/octet-stream")

    @app.post("/clients/{client_id}/jobs", tags=["jobs"], status_code=202, response_model=JobStatus,
              summary="Submit an encrypted batch as a job",
              description=f"As `predict`, for up to {limits.max_job_samples} samples; answers at once with the job's "
                          "id. Poll `GET /clients/{client_id}/jobs/{job_id}`, then fetch `.../result` (kept "
                          f"{limits.result_ttl_s:g} s).",
              openapi_extra=BINARY_BODY,
              responses={400: _problem("Not ciphertexts of this model"), 401: _problem("Missing or wrong token"),
                         413: _problem("Body larger than the service takes"),
                         429: _problem("The work queue is full: retry after Retry-After seconds")})
    async def submit_job(client_id: str, request: Request, response: Response,
                         keys_file: Annotated[Path, Depends(authenticated_client)]) -> JobStatus:
        samples = await samples_of(request, job_limit, limits.max_job_samples)
        job = submit(request, client_id, keys_file, samples, keep=True)
        response.headers["Location"] = f"/clients/{client_id}/jobs/{job.id}"
        return JobStatus(**job.describe())

    def client_job(client_id: str, job_id: str, keys_file: Annotated[Path, Depends(authenticated_client)]) -> Job:
        try:
            return jobs.get(client_id, job_id)
        except UnknownJob as unknown:
            raise HTTPException(404, str(unknown)) from None

    @app.get("/clients/{client_id}/jobs/{job_id}", tags=["jobs"], response_model=JobStatus,
             summary="A job's progress", responses={404: _problem("No such job (or its result expired)")})
    async def job_status(job: Annotated[Job, Depends(client_job)]) -> JobStatus:
        return JobStatus(**job.describe())

    @app.get("/clients/{client_id}/jobs/{job_id}/result", tags=["jobs"], response_class=Response,
             summary="A finished job's encrypted outputs",
             responses={200: {"content": {"application/octet-stream": {}}, "description": "Encrypted outputs"},
                        404: _problem("No such job"), 409: _problem("Not finished yet")})
    async def job_result(job: Annotated[Job, Depends(client_job)]) -> Response:
        if not job.is_finished:
            raise HTTPException(409, f"job {job.id} is {job.status} ({job.done} of {job.total} samples): "
                                     "poll its status until it is done")
        if job.status != DONE:
            raise Refused(job.error)
        return Response(job.result, media_type="application/octet-stream")

    @app.delete("/clients/{client_id}/jobs/{job_id}", tags=["jobs"], status_code=204, response_class=Response,
                summary="Cancel a job, or forget its result")
    async def cancel_job(job: Annotated[Job, Depends(client_job)]) -> Response:
        jobs.forget(job)
        return Response(status_code=204)

    update_store_gauges()
    return app


def default_key_store(fingerprint: str) -> Path:
    """Where a service keeps uploaded keys unless told: the user's state folder, one per model."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "fheestimators" / "key-stores" / fingerprint[:16]


def _add_error_handlers(app: FastAPI) -> None:
    """Refusals as 4xx/5xx with a ``detail`` saying what is wrong, never a crashed process."""

    def refuse(status_code: int, headers: Optional[dict] = None):
        async def handler(request: Request, error: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(error)}, status_code=status_code, headers=headers)
        return handler

    async def refused(request: Request, error: Refused) -> JSONResponse:
        failure = error.failure
        headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else None
        return JSONResponse({"detail": failure.detail}, status_code=failure.status_code, headers=headers)

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(PayloadError, refuse(400))
    app.add_exception_handler(UnknownClient, refuse(404))
    app.add_exception_handler(Quarantined, refuse(403))
    app.add_exception_handler(StoreFull, refuse(507))
    app.add_exception_handler(BadToken, refuse(401, {"WWW-Authenticate": "Bearer"}))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        event("internal_error", logging.ERROR, exc_info=(type(error), error, error.__traceback__),
              method=request.method, route=getattr(request.scope.get("route"), "path", "unmatched"),
              error=type(error).__name__)
        # the client learns only that the fault is ours
        return JSONResponse({"detail": f"internal error of the service ({type(error).__name__}); "
                                       "it is logged, the request can be retried"}, status_code=500)

    app.add_exception_handler(Exception, internal_error)
