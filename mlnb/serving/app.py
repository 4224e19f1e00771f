"""``mlnb serve``: the model version an MLflow alias names, behind MLflow's scoring protocol.

``POST /invocations`` takes what ``mlflow models serve`` takes (JSON with
``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs``; CSV;
Parquet) and answers ``{"predictions": [...]}``, plus ``model_version`` and
``request_id``. ``POST /feedback`` takes ground-truth labels by request id;
``GET /ping``, ``/health``, ``/version`` and ``/metrics`` (Prometheus) tell
how the service is.

Design decisions:

- **Follow the alias, swap atomically.** A thread polls the registry every
  ``poll_seconds``; when the alias names another version it loads that version
  beside the serving one and swaps a single reference. A request reads the
  reference once, so it is answered start to end by one version, and no
  request waits for or fails on a swap. A version that fails to load leaves
  the old one serving; the failure shows in ``/health``, ``/version``,
  ``/metrics`` and the log, and is retried after :data:`mlnb.service.RETRY_SECONDS`.
- **A lean scoring path.** ``/invocations`` is a raw ASGI endpoint: orjson
  parses the body, rows go straight into a float64 matrix in the signature's
  column order when every input column is numeric, and the scikit-learn
  flavor's own ``predict`` runs on it. Measured on a one-row request to a
  StandardScaler + LogisticRegression pipeline: ``mlflow.pyfunc`` on a
  DataFrame takes 1.3 ms, the pipeline on a DataFrame 0.75 ms, the pipeline on
  a matrix 0.23 ms; the rest of the endpoint (parse, check, log, metrics,
  answer) about 0.02 ms. Anything the fast path does not take cleanly is
  checked column by column in pandas, which names the column, row and value
  at fault. Bodies larger than :data:`INLINE_BYTES` are scored on a worker
  thread so they do not stall the event loop.
- **Validate at the boundary.** Inputs are checked against the model's
  signature (names, types, required values) before the model sees them; a
  client error is a 4xx ``{"error_code", "message"}`` that names the problem,
  never a traceback. Models without a column signature are parsed by MLflow's
  own scoring-server functions and checked by the pyfunc model.
- **Log before answering.** Each answered request is appended to the
  prediction log (:mod:`mlnb.predlog`) before its response is sent, so a
  client that has a request id can always give feedback for it. A log that
  cannot be written (disk full) is counted and reported, and predictions go on.
- **Serving never imports the notebook machinery** (papermill, nbclient,
  jupyter, :mod:`mlnb.pipeline`): a service starts in the time it takes to
  import MLflow and load the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import importlib.util
import logging
import logging.config
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlnb.errors import MlnbError, suggest
from mlnb.predictions.log import PredictionLog, default_log_dir, find_request, new_request_id
from mlnb.serving.scoring import CSV, JSON, PARQUET, Reject, error_text, load_version, score
from mlnb.serving.state import Service
from mlnb.store import tracking_uri as default_tracking_uri

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 10 * 2**20
INLINE_BYTES = 256 * 2**10  # larger bodies are parsed and scored off the event loop
_DUMP = orjson.OPT_SERIALIZE_NUMPY


class ServeError(MlnbError):
    """The service cannot start: the store, the model, its alias or its version.

    Attributes:
        model: the registered model name.
        alias: the alias the service follows.
        tracking_uri: the MLflow store asked.
    """

    def __init__(self, message: str, *, model: str, alias: str, tracking_uri: str) -> None:
        self.model = model
        self.alias = alias
        self.tracking_uri = tracking_uri
        super().__init__(message)


# --- HTTP -----------------------------------------------------------------------------------------


def _headers(scope: Scope) -> tuple[str | None, str, int | None]:
    """The media type, its charset and the declared length of a request."""
    media, charset, length = None, "utf-8", None
    for key, value in scope["headers"]:
        if key == b"content-type":
            parts = value.decode("latin-1").split(";")
            media = parts[0].strip().lower()
            for part in parts[1:]:
                name, _, val = part.partition("=")
                if name.strip().lower() == "charset":
                    charset = val.strip().strip('"').lower()
        elif key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise Reject("the Content-Length header is not a number") from None
    return media, charset, length


async def _body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """The whole request body; a 413 as soon as it is known to exceed ``limit``."""
    too_large = Reject(
        f"the request body exceeds {limit:,} bytes; send fewer rows per request", 413
    )
    if declared is not None and declared > limit:
        raise too_large
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large
        return body
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Reject("the client went away", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_INTERNAL = Reject("internal error; the server log has the details", 500, "INTERNAL_ERROR")
_NO_ROUTE = "ENDPOINT_NOT_FOUND"


class _Endpoint:
    """A raw ASGI endpoint with uniform errors and metrics (Starlette passes it through)."""

    def __init__(
        self,
        service: Service,
        name: str,
        work: Callable[[Scope, Receive], Awaitable[tuple[int, bytes, list[tuple[bytes, bytes]]]]],
    ) -> None:
        self.service, self.name, self.work = service, name, work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            status, body, headers = await self.work(scope, receive)
        except Reject as reject:
            status, body, headers = reject.status, reject.body(), []
            self.service.metrics.errors.labels(self.name, reject.kind).inc()
        except Exception:
            logger.exception("%s failed", self.name)
            status, body, headers = _INTERNAL.status, _INTERNAL.body(), []
            self.service.metrics.errors.labels(self.name, "internal").inc()
        if self.name == "invocations" and not headers:
            headers = [(b"x-model-version", self.service.current.version.encode())]
        await _send(send, status, body, headers)
        self.service.metrics.answered(self.name, status, time.perf_counter() - start)


def _either(names: Sequence[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def _media(media: str | None, charset: str, allowed: Sequence[str]) -> str:
    if media is None:
        raise Reject(f"the request has no Content-Type; send {_either(allowed)}", 415)
    if media not in allowed:
        raise Reject(f"unsupported Content-Type '{media}'; send {_either(allowed)}", 415)
    if charset not in ("utf-8", "utf8"):
        raise Reject(f"unsupported charset '{charset}'; send UTF-8", 415)
    return media


def _feedback_items(body: bytes) -> list[tuple[str, list[Any]]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Reject(f"malformed JSON: {exc}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise Reject("no feedback in the request")
    out = []
    for i, item in enumerate(items):
        where = f"item {i}: " if isinstance(doc, list) else ""
        if not isinstance(item, dict):
            raise Reject(f'{where}feedback is an object {{"request_id": ..., "labels": [...]}}')
        rid, labels = item.get("request_id"), item.get("labels")
        if not isinstance(rid, str):
            raise Reject(f"{where}'request_id' must be the string a prediction answered")
        if not isinstance(labels, list):
            raise Reject(f"{where}'labels' must be a list, one label per predicted row")
        out.append((rid, labels))
    return out


class _Handlers:
    """The work of ``/invocations`` and ``/feedback`` on one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def invocations(self, scope: Scope, receive: Receive) -> tuple[int, bytes, Any]:
        service = self.service
        served = service.current  # one version answers the whole request
        media, charset, declared = _headers(scope)
        body = await _body(receive, declared, service.max_body_bytes)
        if not body:
            raise Reject("the request body is empty; send the rows to predict")
        mime = _media(media, charset, (JSON, CSV, PARQUET))
        ms = time.time_ns() // 1_000_000
        if len(body) <= INLINE_BYTES:
            outputs, columns, inputs, rows = score(served, mime, body)
        else:
            loop = asyncio.get_running_loop()
            outputs, columns, inputs, rows = await loop.run_in_executor(
                None, score, served, mime, body
            )
        request_id = new_request_id(ms)
        service.logged(
            lambda: service.log.write_prediction(
                request_id, ms, served.version, columns, inputs, outputs, rows
            )
        )
        service.metrics.rows.inc(rows)
        answer = {"predictions": outputs, "model_version": served.version, "request_id": request_id}
        headers = [
            (b"x-model-version", served.version.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        return 200, orjson.dumps(answer, option=_DUMP), headers

    async def feedback(self, scope: Scope, receive: Receive) -> tuple[int, bytes, Any]:
        service = self.service
        media, charset, declared = _headers(scope)
        body = await _body(receive, declared, service.max_body_bytes)
        if not body:
            raise Reject('the request body is empty; send {"request_id": ..., "labels": [...]}')
        _media(media, charset, (JSON,))
        items = _feedback_items(body)
        unknown = []
        loop = asyncio.get_running_loop()
        for request_id, labels in items:
            rows = service.log.recent_rows(request_id)
            if rows is None:  # an older request: look in the day file its id names
                rows = await loop.run_in_executor(
                    None, find_request, service.log.directory, request_id
                )
            if rows is None:
                unknown.append(request_id)
            elif len(labels) != rows:
                raise Reject(
                    f"request '{request_id}' predicted {rows} row{'s' if rows != 1 else ''}; "
                    f"got {len(labels)} label{'s' if len(labels) != 1 else ''}"
                )
        if unknown:
            names = ", ".join(f"'{rid}'" for rid in unknown[:5])
            raise Reject(
                f"unknown request id{'s' if len(unknown) > 1 else ''} {names}; give feedback "
                "with the request_id of a prediction this service logged",
                404,
                "RESOURCE_DOES_NOT_EXIST",
            )
        ms = time.time_ns() // 1_000_000
        for request_id, labels in items:
            service.logged(lambda r=request_id, v=labels: service.log.write_feedback(r, v, ms))
        if service.log_trouble is not None:
            raise Reject(service.log_trouble.message, 503, "TEMPORARILY_UNAVAILABLE", "log")
        return 200, orjson.dumps({"accepted": len(items)}), []


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


class _ScoringApp(Starlette):
    """Starlette, with ``POST /invocations`` passed straight to its endpoint.

    The scoring endpoint handles its own errors, so the middleware stack and
    the router are skipped: about 20 µs a request here, as much as parsing,
    checking, logging and answering take together.
    """

    def __init__(self, invocations: _Endpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.invocations = invocations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        http = scope["type"] == "http"
        if http and scope["method"] == "POST" and scope["path"] == "/invocations":
            await self.invocations(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def build_app(service: Service) -> Starlette:
    """The ASGI application of a :class:`Service`."""
    handlers = _Handlers(service)
    invocations = _Endpoint(service, "invocations", handlers.invocations)

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")  # as mlflow models serve

    async def health(request: Request) -> Response:
        return _json(service.health())

    async def version(request: Request) -> Response:
        return _json(service.version_info())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        reject = (
            Reject(f"no route {request.method} {request.url.path}", status, _NO_ROUTE)
            if status in (404, 405)
            else _INTERNAL
        )
        return Response(reject.body(), reject.status, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)
            service.log.close()

    app = _ScoringApp(
        invocations,
        routes=[
            Route("/invocations", invocations, methods=["POST"]),
            Route("/feedback", _Endpoint(service, "feedback", handlers.feedback), methods=["POST"]),
            Route("/ping", ping),
            Route("/health", health),
            Route("/version", version),
            Route("/metrics", metrics),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


# --- starting a service ---------------------------------------------------------------------------


def _resolve(
    client: MlflowClient, uri: str, model: str, alias: str, fail: Callable[[str], ServeError]
) -> str:
    """The version ``alias`` names, or a :class:`ServeError` that says what to do."""
    try:
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise fail(f"cannot use the MLflow store {uri}: {exc.message}") from None
        names = [m.name for m in client.search_registered_models(max_results=1000)]
        hint = suggest(model, names) or (
            "; register one by running a pipeline with a `model` section (`mlnb run`)"
        )
        raise fail(f"no registered model '{model}' in the MLflow store {uri}{hint}") from None
    except Exception as exc:  # the store cannot be reached: SQLAlchemy, HTTP errors
        raise fail(f"cannot reach the MLflow store {uri}: {exc}") from None
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        others = ", ".join(f"@{a} → version {v}" for a, v in sorted(aliases.items()))
        raise fail(
            f"no version of '{model}' has alias '{alias}'; promote one with "
            f"`mlnb promote {model}`" + (f" (aliases set: {others})" if others else "")
        )
    return str(aliases[alias])


def create_app(
    model: str,
    alias: str = "champion",
    tracking_uri: str | None = None,
    log_dir: Path | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    *,
    project: Path | None = None,
) -> Starlette:
    """Load the version ``alias`` names and build the ASGI app that serves it.

    The app follows the alias once it runs (its lifespan starts the follower
    thread); building it starts nothing.

    Args:
        model: the registered model name.
        alias: the alias to serve and follow.
        tracking_uri: the MLflow store; default ``MLFLOW_TRACKING_URI``, else
            the project's ``mlflow.db``.
        log_dir: the prediction log folder; default ``<project>/.mlnb/predictions``.
        poll_seconds: how often the alias is looked up.
        max_body_bytes: the largest request body taken (larger: 413).
        project: the project root; default the current folder.

    Returns:
        A Starlette application; ``app.state.service`` is its :class:`Service`.

    Raises:
        ServeError: the store cannot be reached, the model is not registered,
            the alias is not set, or the version it names cannot be loaded.
    """
    root = Path(project) if project is not None else Path.cwd()
    uri = tracking_uri or default_tracking_uri(root)
    fail = functools.partial(ServeError, model=model, alias=alias, tracking_uri=uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise fail(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run `mlnb run` in the project "
            "first, or point MLFLOW_TRACKING_URI at your store"
        )
    if poll_seconds <= 0 or max_body_bytes <= 0:
        raise fail("poll_seconds and max_body_bytes must be positive")
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise fail(f"cannot open the MLflow store {uri}: {exc}") from None
    version = _resolve(client, uri, model, alias, fail)
    try:
        first = load_version(client, model, version, uri)
    except Exception as exc:
        raise fail(
            f"version {version} of '{model}' (alias '{alias}') cannot be loaded: "
            f"{error_text(exc)}; move the alias to a version that loads"
        ) from None
    if first.schema is None:
        logger.warning(
            "version %s of '%s' has no column signature: requests are checked by MLflow only",
            version,
            model,
        )
    directory = Path(log_dir) if log_dir is not None else default_log_dir(root)
    try:
        log = PredictionLog(directory)
    except OSError as exc:
        raise fail(f"cannot create the prediction log at {directory}: {exc}") from None
    service = Service(client, uri, model, alias, first, log, poll_seconds, max_body_bytes)
    logger.info(
        "serving version %s of '%s' (alias '%s', %s flavor) from %s; logging predictions to %s",
        version,
        model,
        alias,
        first.flavor,
        uri,
        directory,
    )
    return build_app(service)


def _listen(host: str, port: int, fail: Callable[[str], ServeError]) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None


def _log_config(level: str) -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mlnb"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


@contextlib.contextmanager
def _return_on_signals() -> Any:
    """Let ``serve`` return after uvicorn's graceful shutdown on SIGINT or SIGTERM.

    uvicorn handles both signals itself, then re-raises the one it caught to
    the handler that was there before it started; that handler is a no-op
    here, so the process does not die (SIGTERM) or raise (SIGINT) past us.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(
    model: str,
    alias: str = "champion",
    host: str = "127.0.0.1",
    port: int = 8080,
    tracking_uri: str | None = None,
    log_dir: Path | None = None,
    *,
    project: Path | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "info",
) -> None:
    """Serve a model's aliased version over HTTP until SIGINT or SIGTERM.

    One uvicorn worker (uvloop and httptools when installed), no access log;
    mlnb's own messages (swaps, load failures) go to the server log on
    stderr. Returns after a graceful shutdown.

    Args:
        model: the registered model name.
        alias: the alias to serve and follow.
        host: the address to listen on.
        port: the port to listen on (0: any free port).
        tracking_uri: the MLflow store (see :func:`create_app`).
        log_dir: the prediction log folder (see :func:`create_app`).
        project: the project root; default the current folder.
        poll_seconds: how often the alias is looked up.
        max_body_bytes: the largest request body taken.
        log_level: the server log's level.

    Raises:
        ServeError: as :func:`create_app`, or the address is taken.
    """
    import uvicorn

    config_log = _log_config(log_level)
    logging.config.dictConfig(config_log)  # before loading, so its messages show
    uri = tracking_uri or default_tracking_uri(Path(project) if project else Path.cwd())
    fail = functools.partial(ServeError, model=model, alias=alias, tracking_uri=uri)
    sock = _listen(host, port, fail)  # a taken port fails before the model loads
    try:
        app = create_app(model, alias, uri, log_dir, poll_seconds, max_body_bytes, project=project)
        config = uvicorn.Config(
            app,
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            lifespan="on",
            access_log=False,
            log_config=config_log,
            log_level=log_level,
            timeout_graceful_shutdown=10,
        )
        with _return_on_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
