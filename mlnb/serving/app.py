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
- **Tokens at the door.** With a tokens file (:mod:`mlnb.serving.auth`),
  ``/invocations`` needs a ``predict`` token and ``/feedback`` a ``feedback``
  token, checked before the body is read: 401 with ``WWW-Authenticate:
  Bearer`` without a valid token, 403 with a token of another scope.
  ``/version`` needs a token of either scope (it names the run, the model's
  files and the store). ``/ping``, ``/health`` and ``/metrics`` stay open
  for load balancers, probes and scrapers: they carry the service's state and
  counts, never a prediction, a label or a secret.
- **A lean scoring path.** ``/invocations`` is a raw ASGI endpoint: orjson
  parses the body, rows go straight into a float64 matrix in the signature's
  column order when every input column is numeric, and the scikit-learn
  flavor's own ``predict`` runs on it. Measured on a one-row request to a
  StandardScaler + LogisticRegression pipeline: ``mlflow.pyfunc`` on a
  DataFrame takes 1.3 ms, the pipeline on a DataFrame 0.75 ms, the pipeline on
  a matrix 0.23 ms; the rest of the endpoint (parse, check, log, metrics,
  answer) about 0.02 ms. Anything the fast path does not take cleanly is
  checked column by column in pandas, which names the column, row and value
  at fault (:mod:`mlnb.serving.parsing`).
- **No request holds the event loop.** Only JSON bodies up to
  :data:`INLINE_BYTES` are scored on the event loop; every other body (CSV,
  Parquet, larger JSON) is scored on one of at most ``workers`` daemon
  threads, so ``/ping`` answers while a large request is parsed, and a
  SIGTERM ends the process whatever a worker is doing (a daemon thread does
  not keep it alive; uvicorn's graceful shutdown gives requests a few seconds).
- **Validate at the boundary.** The body's size is bounded before it is read
  whole and its arrival by ``read_seconds`` (408 after that), its media type
  checked, and its rows checked against the model's signature (names, types,
  required values) before the model sees them; a client error is a 4xx
  ``{"error_code", "message"}`` that names the problem, never a traceback.
  Models without a column signature are parsed by MLflow's own
  scoring-server functions and checked by the pyfunc model. Feedback is
  bounded to :data:`MAX_FEEDBACK_ITEMS` items, its request ids looked up in
  the log's index, and its labels checked against the model's output type.
- **A challenger beside the champion** (:mod:`mlnb.serving.challenger`). A
  canary answers the requests whose key (``X-Request-Key``, else the request
  id) hashes into its share, named in the answer's ``model_version`` and
  ``X-Model-Version`` as any version, and logged with ``"arm": "canary"``. A
  shadow gets each request once the champion's answer is logged, by a
  ``put_nowait`` into its bounded queue: its work, failures and slowness are
  its worker thread's, never the request's.
- **Nothing answered that was not logged.** Each answered request is appended
  to the prediction log (:mod:`mlnb.predictions.log`) before its response is
  sent, so a client that has a request id can always give feedback for it,
  and the log (the next model's training data) holds every answer. When the
  log cannot be written, predictions are answered 503 and feedback too; the
  trouble shows in ``/health`` and ``/metrics``, and the next write that
  succeeds ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

import orjson
from mlflow.version import VERSION as MLFLOW_VERSION
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlnb.predictions.log import CANARY, CHAMPION, Arm, LogWriteError, new_request_id
from mlnb.serving.auth import Denied, Holder, Tokens
from mlnb.serving.auth import Scope as TokenScope
from mlnb.serving.challenger import KEY_HEADER, in_canary
from mlnb.serving.openapi import describe, swagger_page
from mlnb.serving.parsing import CSV, JSON, PARQUET, Reject
from mlnb.serving.scoring import Scored, score
from mlnb.serving.state import Service, label_problem

logger = logging.getLogger(__name__)

INLINE_BYTES = 64 * 2**10  # larger JSON bodies, and every CSV or Parquet one, go to a worker
READ_SECONDS = 10.0  # a client has this long to send a request's head, and again its body
WORKERS = 4  # requests scored off the event loop at once
MAX_FEEDBACK_ITEMS = 10_000
_DUMP = orjson.OPT_SERIALIZE_NUMPY

#: the endpoints that do work, as the metrics label them
EndpointName = Literal["invocations", "feedback"]
Headers = list[tuple[bytes, bytes]]
#: what an endpoint's work answers: status, JSON body, headers beyond the content's
Answer = tuple[int, bytes, Headers]
#: an endpoint's work: the request's scope, its body's channel, and who sent it
Work = Callable[[Scope, Receive, Holder | None], Awaitable[Answer]]

_INTERNAL = Reject("internal error; the server log has the details", 500, "INTERNAL_ERROR")
_NO_ROUTE = "ENDPOINT_NOT_FOUND"
_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"
_CLOSE = (b"connection", b"close")
_UNREAD_BODY = (401, 403, 408, 413)  # answered before the body was read whole: close after
_P = ParamSpec("_P")
_T = TypeVar("_T")


class Workers:
    """At most ``count`` functions running at once, each on a daemon thread of its own.

    Daemon threads, not a thread pool: a pool's threads are joined when the
    interpreter exits, so a parse that runs for minutes would keep a stopped
    service alive. A slot is freed when its thread ends, even if the request
    waiting for it was cancelled (a shutdown).

    Args:
        count: how many may run at once.
    """

    def __init__(self, count: int) -> None:
        self._slots = asyncio.Semaphore(count)

    async def run(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``function(*args, **kwargs)`` on a daemon thread, once a slot is free."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            self._slots.release()
            if future.done():  # the request was cancelled meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (function(*args, **kwargs), None)
            except BaseException as exc:  # handed to the awaiting request
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop has closed: the service stopped
                loop.call_soon_threadsafe(settle, *outcome)

        try:
            threading.Thread(target=work, name="mlnb-serve-worker", daemon=True).start()
        except BaseException:
            self._slots.release()
            raise
        return await future


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The value of one request header (the first, when repeated), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _headers(scope: Scope) -> tuple[str | None, str, int | None]:
    """The media type, its charset and the declared length of a request.

    A media type parameter other than ``charset`` (MLflow 1's ``format=``)
    is kept in the charset as ``;name``, so that :func:`_media` refuses it
    as MLflow does.
    """
    media, charset, length = None, "utf-8", None
    for key, value in scope["headers"]:
        if key == b"content-type":
            parts = value.decode("latin-1").split(";")
            media = parts[0].strip().lower()
            for part in parts[1:]:
                name, _, val = part.partition("=")
                if name.strip().lower() == "charset":
                    charset = val.strip().strip('"').lower()
                elif name.strip():
                    charset = f";{name.strip()[:100]}"
        elif key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise Reject("the Content-Length header is not a number") from None
    return media, charset, length


async def _body(receive: Receive, declared: int | None, limit: int, seconds: float) -> bytes:
    """The whole request body within ``seconds`` (else a 408); a 413 once it exceeds ``limit``."""
    try:
        async with asyncio.timeout(seconds):
            return await _read_body(receive, declared, limit)
    except TimeoutError:
        raise Reject(
            f"the request body did not arrive within {seconds:g} s; send it at once",
            408,
            "REQUEST_TIMEOUT",
            "bad_request",
        ) from None


async def _read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
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
    """A raw ASGI endpoint with its token check, uniform errors and metrics.

    Starlette passes it through. With ``tokens``, a request without a token
    of ``scope`` is refused before its body is read.
    """

    def __init__(
        self,
        service: Service,
        name: EndpointName,
        work: Work,
        scope: TokenScope,
        tokens: Tokens | None,
    ) -> None:
        self.service, self.name, self.work = service, name, work
        self.scope, self.tokens = scope, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            holder = self._holder(scope)
            status, body, headers = await self.work(scope, receive, holder)
        except Denied as denied:
            status, body, headers = denied.status, denied.body(), denied.headers()
            self.service.metrics.errors.labels(self.name, denied.kind).inc()
        except Reject as reject:
            status, body, headers = reject.status, reject.body(), self._version(reject.version)
            self.service.metrics.errors.labels(self.name, reject.kind).inc()
        except Exception:
            logger.exception("%s failed", self.name)
            status, body, headers = _INTERNAL.status, _INTERNAL.body(), self._version()
            self.service.metrics.errors.labels(self.name, "internal").inc()
        if status in _UNREAD_BODY:
            headers = [*headers, _CLOSE]
        await _send(send, status, body, headers)
        self.service.metrics.answered(self.name, status, time.perf_counter() - start)

    def _holder(self, scope: Scope) -> Holder | None:
        if self.tokens is None:
            return None
        return self.tokens.check(_header(scope, b"authorization"), self.scope)

    def _version(self, version: str | None = None) -> Headers:
        if self.name != "invocations":
            return []
        return [(b"x-model-version", (version or self.service.current.version).encode())]


def _either(names: Sequence[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def _media(media: str | None, charset: str, allowed: Sequence[str]) -> str:
    """The request's media type if it is one of ``allowed`` in UTF-8; a 415 if not."""
    if media is None:
        raise Reject(f"the request has no Content-Type; send {_either(allowed)}", 415)
    if media not in allowed:
        raise Reject(f"unsupported Content-Type '{media}'; send {_either(allowed)}", 415)
    if charset.startswith(";"):
        raise Reject(
            f"unrecognized Content-Type parameter '{charset[1:]}'; only charset is taken "
            "(MLflow 2 and later name the format in the body: dataframe_split, ...)",
            415,
        )
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
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise Reject(
            f"{len(items):,} feedback items in one request, more than {MAX_FEEDBACK_ITEMS:,}; "
            "send them in several requests",
            413,
        )
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

    def __init__(self, service: Service, read_seconds: float, workers: int) -> None:
        self.service = service
        self.read_seconds = read_seconds
        self.workers = Workers(workers)

    async def _read(
        self, scope: Scope, receive: Receive, empty: str
    ) -> tuple[str | None, str, bytes]:
        """The media type, charset and body of a request; ``empty`` says what a body holds."""
        media, charset, declared = _headers(scope)
        body = await _body(receive, declared, self.service.max_body_bytes, self.read_seconds)
        if not body:
            raise Reject(empty)
        return media, charset, body

    async def invocations(self, scope: Scope, receive: Receive, holder: Holder | None) -> Answer:
        service = self.service
        served = service.current  # one version answers the whole request
        media, charset, body = await self._read(
            scope, receive, "the request body is empty; send the rows to predict"
        )
        mime = _media(media, charset, (JSON, CSV, PARQUET))
        ms = time.time_ns() // 1_000_000
        request_id = new_request_id(ms)
        arm: Arm = CHAMPION
        canary = service.canary
        if canary is not None and (challenger := canary.current) is not None:
            key = _header(scope, KEY_HEADER) or request_id.encode()
            if in_canary(key, canary.challenger.percent):
                served, arm = challenger, CANARY
        fields = {"model_version": served.version, "request_id": request_id}
        limits = service.limits
        try:
            if mime == JSON and len(body) <= INLINE_BYTES and served.wants_matrix:
                scored = score(served, mime, body, limits, fields)  # microseconds: on the loop
            else:
                work = functools.partial(score, served, mime, body, limits, fields)
                scored = await self._in_time(work)
        except Reject as reject:
            reject.version = served.version  # the error names the version that gave it
            raise
        service.observe(served.version, scored.outputs)
        write = functools.partial(
            service.log.write_prediction,
            request_id,
            ms,
            served.version,
            scored.columns,
            scored.inputs,
            scored.outputs,
            scored.rows,
            arm,
        )
        try:
            service.logged(write)
        except LogWriteError:
            raise self._unlogged("the prediction is not answered") from None
        service.metrics.rows.inc(scored.rows)
        if arm == CANARY:
            service.metrics.canary_answers.inc()
        elif service.shadow is not None:
            service.shadow.submit(request_id, ms, mime, body, scored.rows)
        headers = [
            (b"x-model-version", served.version.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        return 200, scored.answer, headers

    async def _in_time(self, work: Callable[[], Scored]) -> Scored:
        """``work`` on a worker thread; a 504 once the service's timeout has passed.

        The thread runs on (Python cannot stop it) but holds one of the
        bounded worker slots, so a model that hangs cannot pile up threads.
        """
        timeout = self.service.timeout
        try:
            return await asyncio.wait_for(self.workers.run(work), timeout)
        except TimeoutError:
            raise Reject(
                f"the request took longer than this service's timeout of {timeout:g} s; send "
                "fewer rows, or raise --timeout where the service is started",
                504,
                "DEADLINE_EXCEEDED",
                "timeout",
            ) from None

    def _unlogged(self, what: str) -> Reject:
        """The 503 of a request whose record the log could not take."""
        trouble = self.service.log_trouble
        reason = trouble.message if trouble is not None else "cannot write the log"
        return Reject(
            f"{what}: {reason}; the service answers again once its log can be written",
            503,
            _UNAVAILABLE,
            "log",
        )

    async def feedback(self, scope: Scope, receive: Receive, holder: Holder | None) -> Answer:
        service = self.service
        media, charset, body = await self._read(
            scope,
            receive,
            'the request body is empty; send {"request_id": ..., "labels": [...]}',
        )
        _media(media, charset, (JSON,))
        items = _feedback_items(body)
        await self._check_known(items)
        self._check_labels(items)
        ms = time.time_ns() // 1_000_000
        sender = holder.name if holder is not None else None
        for done, (request_id, labels) in enumerate(items):
            write = functools.partial(
                service.log.write_feedback, request_id, labels, ms, sender=sender
            )
            try:
                service.logged(write)
            except LogWriteError:
                raise self._unlogged(
                    f"{done} of {_plural(len(items), 'feedback item')} recorded; send them all "
                    "again (a later label replaces an earlier one)"
                ) from None
        return 200, orjson.dumps({"accepted": len(items)}), []

    async def _check_known(self, items: list[tuple[str, list[Any]]]) -> None:
        """Each request id was logged, with one row per label; a :class:`Reject` if not."""
        ids = [request_id for request_id, _ in items]
        rows = await self.workers.run(self.service.log.known_requests, ids)
        unknown = []
        for request_id, labels in items:
            count = rows.get(request_id)
            if count is None:
                unknown.append(request_id)
            elif len(labels) != count:
                raise Reject(
                    f"request '{request_id}' predicted {_plural(count, 'row')}; "
                    f"got {_plural(len(labels), 'label')}"
                )
        if unknown:
            await self._check_pruned(unknown)
            names = ", ".join(f"'{rid[:64]}'" for rid in unknown[:5])
            more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
            raise Reject(
                f"unknown request id{'s' if len(unknown) > 1 else ''} {names}{more}; give "
                "feedback with the request_id of a prediction this service logged",
                404,
                "RESOURCE_DOES_NOT_EXIST",
            )

    async def _check_pruned(self, unknown: list[str]) -> None:
        """A 404 that says so when unknown requests were predicted on days retention deleted."""
        log = self.service.log
        pruned = await self.workers.run(log.pruned_days, unknown)
        if not pruned:
            return
        from mlnb.predictions.files import read_pruned

        setting = read_pruned(log.directory).retention
        request_id, day = next(iter(pruned.items()))
        more = f" (and {len(pruned) - 1:,} more)" if len(pruned) > 1 else ""
        raise Reject(
            f"request '{request_id[:64]}'{more} was predicted on {day}; the prediction log no "
            f"longer holds that day (retention {setting or 'set when it was pruned'}), so its "
            "labels cannot be joined; send labels within the retention window",
            404,
            "RESOURCE_DOES_NOT_EXIST",
        )

    def _check_labels(self, items: list[tuple[str, list[Any]]]) -> None:
        """Each label has the model's output type; a 422 naming request and position if not."""
        kind = self.service.label_kind()
        if kind is None:
            return
        for request_id, labels in items:
            for position, label in enumerate(labels):
                problem = label_problem(kind, label)
                if problem is not None:
                    raise Reject(
                        f"request '{request_id}' label {position}: {problem}",
                        422,
                        "INVALID_PARAMETER_VALUE",
                        "bad_request",
                    )


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


def build_app(
    service: Service,
    tokens: Tokens | None = None,
    read_seconds: float = READ_SECONDS,
    workers: int = WORKERS,
) -> Starlette:
    """The ASGI application of a :class:`Service`; its lifespan starts and stops the follower.

    Args:
        service: the service's state.
        tokens: the tokens the protected endpoints take; ``None``: every
            endpoint is open (a service on the loopback address).
        read_seconds: how long a request's body may take to arrive (then 408).
        workers: how many requests are scored off the event loop at once.
    """
    handlers = _Handlers(service, read_seconds, workers)
    invocations = _Endpoint(
        service, "invocations", handlers.invocations, TokenScope.PREDICT, tokens
    )
    feedback = _Endpoint(service, "feedback", handlers.feedback, TokenScope.FEEDBACK, tokens)

    async def ping(request: Request) -> Response:
        return Response("\n", media_type="application/json")  # as mlflow models serve

    async def version(request: Request) -> Response:
        return Response(MLFLOW_VERSION, media_type="application/json")  # as MLflow: its text

    async def openapi(request: Request) -> Response:
        served = service.current
        return _json(describe(service.model, served.version, served.schema))

    async def docs(request: Request) -> Response:
        return HTMLResponse(swagger_page(f"mlnb serve: {service.model}"))

    async def health(request: Request) -> Response:
        return _json(service.health())

    async def details(request: Request) -> Response:
        if tokens is not None:
            authorization = request.headers.get("authorization")
            try:
                tokens.check(authorization.encode("latin-1") if authorization else None, None)
            except Denied as denied:
                headers = {k.decode(): v.decode() for k, v in denied.headers()}
                return Response(denied.body(), 401, headers, media_type="application/json")
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
            await asyncio.get_running_loop().run_in_executor(None, service.stop, 2.0)
            service.log.close()

    app = _ScoringApp(
        invocations,
        routes=[
            Route("/invocations", invocations, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/ping", ping),
            Route("/health", ping),
            Route("/version", version),
            Route("/openapi.json", openapi),
            Route("/docs", docs),
            Route("/metrics", metrics),
            Route("/mlnb/health", health),
            Route("/mlnb/version", details),
        ],
        exception_handlers={HTTPException: http_error, Exception: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
