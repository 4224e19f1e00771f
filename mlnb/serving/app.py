"""The HTTP front of ``mlnb serve``: the ASGI application of one service.

``POST /invocations`` takes what ``mlflow models serve`` takes (JSON with
``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs``; CSV;
Parquet) and answers ``{"predictions": [...]}``, plus ``model_version`` and
``request_id``. ``POST /feedback`` takes ground-truth labels by request id;
``GET /ping``, ``/health``, ``/version`` and ``/metrics`` (Prometheus) tell
how the service is. :func:`build_app` builds it; starting a service (loading
the version, the socket, uvicorn) is :mod:`mlnb.serving.server`.

Design decisions:

- **Follow the alias, swap atomically.** The service's follower thread
  (:mod:`mlnb.serving.state`) swaps a single reference when the alias moves;
  a request reads that reference once, so it is answered start to end by one
  version, and no request waits for or fails on a swap. A version that fails
  to load leaves the old one serving; the failure shows in ``/health``,
  ``/version``, ``/metrics`` and the log, and is retried after
  :data:`mlnb.serving.state.RETRY_SECONDS`.
- **A lean scoring path.** ``/invocations`` is a raw ASGI endpoint: orjson
  parses the body, rows go straight into a float64 matrix in the signature's
  column order when every input column is numeric, and the scikit-learn
  flavor's own ``predict`` runs on it. Measured on a one-row request to a
  StandardScaler + LogisticRegression pipeline: ``mlflow.pyfunc`` on a
  DataFrame takes 1.3 ms, the pipeline on a DataFrame 0.75 ms, the pipeline on
  a matrix 0.23 ms; the rest of the endpoint (parse, check, log, metrics,
  answer) about 0.02 ms. Anything the fast path does not take cleanly is
  checked column by column in pandas, which names the column, row and value
  at fault (:mod:`mlnb.serving.parsing`). Bodies larger than
  :data:`INLINE_BYTES` are scored on a worker thread so they do not stall the
  event loop.
- **Validate at the boundary.** The body's size is bounded before it is read
  whole, its media type checked, and its rows checked against the model's
  signature (names, types, required values) before the model sees them; a
  client error is a 4xx ``{"error_code", "message"}`` that names the problem,
  never a traceback. Models without a column signature are parsed by MLflow's
  own scoring-server functions and checked by the pyfunc model.
- **Log before answering.** Each answered request is appended to the
  prediction log (:mod:`mlnb.predictions.log`) before its response is sent,
  so a client that has a request id can always give feedback for it. A log
  that cannot be written (disk full) is counted and reported, and predictions
  go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlnb.predictions.log import find_request, new_request_id
from mlnb.serving.parsing import CSV, JSON, PARQUET, Reject
from mlnb.serving.scoring import score
from mlnb.serving.state import Service

logger = logging.getLogger(__name__)

INLINE_BYTES = 256 * 2**10  # larger bodies are parsed and scored off the event loop
_DUMP = orjson.OPT_SERIALIZE_NUMPY

#: the endpoints that do work, as the metrics label them
EndpointName = Literal["invocations", "feedback"]
Headers = list[tuple[bytes, bytes]]
#: what an endpoint's work answers: status, JSON body, headers beyond the content's
Answer = tuple[int, bytes, Headers]

_INTERNAL = Reject("internal error; the server log has the details", 500, "INTERNAL_ERROR")
_NO_ROUTE = "ENDPOINT_NOT_FOUND"


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
    body: bytes = message.get("body", b"")
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


async def _send(send: Send, status: int, body: bytes, extra: Headers) -> None:
    """Answer with a JSON body: the response start, then the body in one message."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Endpoint:
    """A raw ASGI endpoint with uniform errors and metrics (Starlette passes it through)."""

    def __init__(
        self,
        service: Service,
        name: EndpointName,
        work: Callable[[Scope, Receive], Awaitable[Answer]],
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
    """The request's media type if it is one of ``allowed`` in UTF-8; a 415 if not."""
    if media is None:
        raise Reject(f"the request has no Content-Type; send {_either(allowed)}", 415)
    if media not in allowed:
        raise Reject(f"unsupported Content-Type '{media}'; send {_either(allowed)}", 415)
    if charset not in ("utf-8", "utf8"):
        raise Reject(f"unsupported charset '{charset}'; send UTF-8", 415)
    return media


def _feedback_items(body: bytes) -> list[tuple[str, list[Any]]]:
    """The ``(request_id, labels)`` pairs of a feedback body: one object or a list of them."""
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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


class _Handlers:
    """The work of ``/invocations`` and ``/feedback`` on one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def _read(
        self, scope: Scope, receive: Receive, empty: str
    ) -> tuple[str | None, str, bytes]:
        """The media type, charset and body of a request; ``empty`` says what a body holds."""
        media, charset, declared = _headers(scope)
        body = await _body(receive, declared, self.service.max_body_bytes)
        if not body:
            raise Reject(empty)
        return media, charset, body

    async def invocations(self, scope: Scope, receive: Receive) -> Answer:
        service = self.service
        served = service.current  # one version answers the whole request
        media, charset, body = await self._read(
            scope, receive, "the request body is empty; send the rows to predict"
        )
        mime = _media(media, charset, (JSON, CSV, PARQUET))
        ms = time.time_ns() // 1_000_000
        if len(body) <= INLINE_BYTES:
            scored = score(served, mime, body)
        else:
            loop = asyncio.get_running_loop()
            scored = await loop.run_in_executor(None, score, served, mime, body)
        request_id = new_request_id(ms)
        service.logged(
            functools.partial(
                service.log.write_prediction,
                request_id,
                ms,
                served.version,
                scored.columns,
                scored.inputs,
                scored.outputs,
                scored.rows,
            )
        )
        service.metrics.rows.inc(scored.rows)
        answer = {
            "predictions": scored.outputs,
            "model_version": served.version,
            "request_id": request_id,
        }
        headers = [
            (b"x-model-version", served.version.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        return 200, orjson.dumps(answer, option=_DUMP), headers

    async def feedback(self, scope: Scope, receive: Receive) -> Answer:
        service = self.service
        media, charset, body = await self._read(
            scope,
            receive,
            'the request body is empty; send {"request_id": ..., "labels": [...]}',
        )
        _media(media, charset, (JSON,))
        items = _feedback_items(body)
        await self._check_known(items)
        ms = time.time_ns() // 1_000_000
        for request_id, labels in items:
            service.logged(functools.partial(service.log.write_feedback, request_id, labels, ms))
        if service.log_trouble is not None:
            raise Reject(service.log_trouble.message, 503, "TEMPORARILY_UNAVAILABLE", "log")
        return 200, orjson.dumps({"accepted": len(items)}), []

    async def _check_known(self, items: list[tuple[str, list[Any]]]) -> None:
        """Each request id was logged, with one row per label; a :class:`Reject` if not."""
        unknown = []
        for request_id, labels in items:
            rows = await self._rows(request_id)
            if rows is None:
                unknown.append(request_id)
            elif len(labels) != rows:
                raise Reject(
                    f"request '{request_id}' predicted {_plural(rows, 'row')}; "
                    f"got {_plural(len(labels), 'label')}"
                )
        if unknown:
            names = ", ".join(f"'{rid}'" for rid in unknown[:5])
            raise Reject(
                f"unknown request id{'s' if len(unknown) > 1 else ''} {names}; give feedback "
                "with the request_id of a prediction this service logged",
                404,
                "RESOURCE_DOES_NOT_EXIST",
            )

    async def _rows(self, request_id: str) -> int | None:
        """The row count of a logged request: from the recent index, else its day file."""
        log = self.service.log
        rows = log.recent_rows(request_id)
        if rows is not None:
            return rows
        loop = asyncio.get_running_loop()  # an older request: scan the day file its id names
        return await loop.run_in_executor(None, find_request, log.directory, request_id)


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        if http and scope["method"] == "POST" and scope["path"] == "/invocations":
            await self.invocations(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def build_app(service: Service) -> Starlette:
    """The ASGI application of a :class:`Service`; its lifespan starts and stops the follower."""
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
