"""Starting a service: load the version an alias names, build the app, run uvicorn.

:func:`create_app` resolves the alias, loads the version it names and opens
the prediction log; :func:`serve` does that behind a listening socket and
runs uvicorn until SIGINT or SIGTERM. Both are public (``mlnb serve`` and
:func:`mlnb.create_app` use them); the app itself is :mod:`mlnb.serving.app`.

Design decisions:

- **Fail before serving, and say what to do.** A store that does not exist,
  a model that is not registered (with the near name), an alias that is not
  set (with the aliases that are), a version that does not load, a port that
  is taken: each is a :class:`ServeError` before the first request, never a
  half-started service.
- **The port first.** :func:`serve` binds its socket before it loads the
  model, so a taken port fails in a second, not after a minute of loading.
- **No open door by accident.** Listening on an address other than loopback
  needs a tokens file (:mod:`mlnb.serving.auth`), or ``insecure=True`` said
  out loud; without either it is a :class:`ServeError` (exit code 2).
- **Bounded at the socket.** A client has ``read_seconds`` to send a
  request's head (then a 408 and the connection closes; uvicorn alone waits
  forever) and at most :data:`MAX_HEAD_BYTES` of it; an idle keep-alive
  connection is closed after :data:`KEEP_ALIVE_SECONDS`; beyond
  ``max_concurrency`` connections and requests uvicorn answers 503 instead
  of taking more work.
- **uvicorn's shutdown, then return.** uvicorn handles SIGINT and SIGTERM
  gracefully, giving requests in flight :data:`SHUTDOWN_SECONDS`; scoring
  runs on daemon threads, so nothing keeps the process after that.
  :func:`serve` then returns instead of dying, so a caller (the CLI, a test)
  ends as it chooses.
- **A challenger is optional until it exists.** ``shadow`` or ``canary``
  (one of them; both is a :class:`ServeError`, exit code 2) names an alias
  or a version of the same model (:mod:`mlnb.serving.challenger`). A pinned
  version that does not exist fails the start; an alias that is not set yet
  does not (nothing is scored beside the champion until it is), and a
  challenger that fails to load is a trouble the service reports while the
  champion serves.
- **No secret in a message.** The store's URI is printed, logged and raised
  redacted (:func:`mlnb.store.redacted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import importlib.util
import ipaddress
import json
import logging
import logging.config
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from starlette.applications import Starlette

from mlnb.errors import ExitCode, MlnbError, suggest
from mlnb.predictions.log import PredictionLog, default_log_dir
from mlnb.serving import MAX_BODY_BYTES, TIMEOUT_SECONDS
from mlnb.serving.app import READ_SECONDS, build_app
from mlnb.serving.auth import Tokens, read_tokens
from mlnb.serving.challenger import CANARY, SHADOW, Challenger, Follower, Shadow
from mlnb.serving.metrics import Metrics
from mlnb.serving.parsing import DEFAULT_LIMITS, Limits
from mlnb.serving.scoring import Served, error_text, load_version
from mlnb.serving.state import Service, redact_in
from mlnb.store import redacted
from mlnb.store import tracking_uri as default_tracking_uri

if TYPE_CHECKING:
    from mlnb.predictions.retention import Retention

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 2**10  # a request's line and headers
MAX_CONCURRENCY = 64  # connections and requests at once; beyond: 503
KEEP_ALIVE_SECONDS = 5
SHUTDOWN_SECONDS = 5  # requests in flight get this long after SIGTERM


class ServeError(MlnbError):
    """The service cannot start: the store, the model, its alias or its version.

    Attributes:
        model: the registered model name.
        alias: the alias the service follows (``None``: a pinned version).
        tracking_uri: the MLflow store asked.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        alias: str | None,
        tracking_uri: str,
        exit_code: ExitCode = ExitCode.FAILED,
    ) -> None:
        self.model = model
        self.alias = alias
        self.tracking_uri = redacted(tracking_uri)
        self.exit_code = exit_code
        super().__init__(message)


#: makes the :class:`ServeError` of one service start from a message (and an exit code)
_Fail = Callable[..., ServeError]

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")


@dataclass(frozen=True)
class ModelTarget:
    """What a service serves: the version an alias names (followed), or one version (pinned).

    Attributes:
        model: the registered model name.
        alias: the alias followed, or ``None``.
        version: the pinned version, or ``None``.
    """

    model: str
    alias: str | None = "champion"
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelTarget:
        """``models:/NAME@ALIAS`` (followed) or ``models:/NAME/VERSION`` (pinned), as in MLflow.

        Raises:
            ValueError: any other URI, with the forms that work.
        """
        found = _MODEL_URI.match(uri.strip())
        if found is None:
            raise ValueError(
                f"cannot serve '{uri}': mlnb serves registered models, as "
                "models:/NAME@ALIAS (following the alias) or models:/NAME/VERSION (one version); "
                "register the model first (a pipeline with a `model` section, or mlflow's "
                "register_model)"
            )
        version = found["version"]
        if version is not None and not version.isdigit():
            raise ValueError(
                f"cannot serve '{uri}': '{version}' is not a version number (MLflow's stages "
                f"are deprecated); use models:/{found['name']}@ALIAS or models:/{found['name']}/N"
            )
        if version is not None:
            return cls(found["name"], None, version)
        return cls(found["name"], found["alias"])

    def __str__(self) -> str:
        if self.version is not None:
            return f"models:/{self.model}/{self.version}"
        return f"models:/{self.model}@{self.alias}"


def _resolve(client: MlflowClient, uri: str, target: ModelTarget, fail: _Fail) -> str:
    """The version to load first: the pinned one, or the one the alias names.

    Raises:
        ServeError: the model is not registered, the version does not exist,
            or no version has the alias; each says what to do.
    """
    model, alias = target.model, target.alias
    shown = redacted(uri)
    try:
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise fail(
                f"cannot use the MLflow store {shown}: {redact_in(exc.message, uri)}"
            ) from None
        names = [m.name for m in client.search_registered_models(max_results=1000)]
        hint = suggest(model, names) or (
            "; register one by running a pipeline with a `model` section (`mlnb run`)"
        )
        raise fail(f"no registered model '{model}' in the MLflow store {shown}{hint}") from None
    except Exception as exc:  # the store cannot be reached: SQLAlchemy, HTTP errors
        raise fail(f"cannot reach the MLflow store {shown}: {redact_in(str(exc), uri)}") from None
    if target.version is not None:
        return _existing(client, model, target.version, fail)
    assert alias is not None
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        others = ", ".join(f"@{a} → version {v}" for a, v in sorted(aliases.items()))
        raise fail(
            f"no version of '{model}' has alias '{alias}'; promote one with "
            f"`mlnb promote {model}`" + (f" (aliases set: {others})" if others else "")
        )
    return str(aliases[alias])


def _existing(client: MlflowClient, model: str, version: str, fail: _Fail) -> str:
    """``version`` if ``model`` has it, else a :class:`ServeError` naming the versions it has."""
    try:
        client.get_model_version(model, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise fail(f"cannot look up version {version} of '{model}': {exc.message}") from None
        found = client.search_model_versions(f"name = '{model}'", max_results=1000)
        have = sorted((int(v.version) for v in found), reverse=True)[:10]
        listed = ", ".join(map(str, have)) or "none"
        raise fail(f"'{model}' has no version {version} (versions: {listed})") from None
    return version


def create_app(
    model: str,
    alias: str | None = "champion",
    tracking_uri: str | None = None,
    log_dir: Path | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    *,
    project: Path | None = None,
    tokens: Tokens | Path | None = None,
    read_seconds: float = READ_SECONDS,
    version: str | None = None,
    timeout: float = TIMEOUT_SECONDS,
    limits: Limits = DEFAULT_LIMITS,
    log_retention: Retention | None = None,
    shadow: Challenger | str | None = None,
    canary: Challenger | str | None = None,
) -> Starlette:
    """Load the version ``alias`` names (or ``version``) and build the ASGI app that serves it.

    The app follows the alias once it runs (its lifespan starts the follower
    thread); building it starts nothing.

    Args:
        model: the registered model name, or a ``models:/NAME@ALIAS`` or
            ``models:/NAME/VERSION`` URI (then ``alias`` and ``version`` are
            taken from it).
        alias: the alias to serve and follow.
        tracking_uri: the MLflow store; default ``MLFLOW_TRACKING_URI``, else
            the project's ``mlflow.db``.
        log_dir: the prediction log folder; default ``<project>/.mlnb/predictions``.
        poll_seconds: how often the alias is looked up.
        max_body_bytes: the largest request body taken (larger: 413).
        project: the project root; default the current folder.
        tokens: the tokens ``/invocations``, ``/feedback`` and ``/version``
            need, or the tokens file that lists them; ``None``: every endpoint
            is open.
        read_seconds: how long a request's body may take to arrive (then 408).
        version: serve this version, pinned: the alias is not followed.
        timeout: how long a request may be scored (then 504).
        limits: what one request may hold besides its size.
        log_retention: what the prediction log keeps (closed days are
            compressed, days outside it deleted); ``None``: everything.
        shadow: an alias or version of the model scored on every request
            beside the champion, answering none (``challenger``, ``3``).
        canary: an alias or version of the model answering a share of the
            requests (``challenger:10%``); not with ``shadow``.

    Returns:
        A Starlette application; ``app.state.service`` is its :class:`Service`.

    Raises:
        ServeError: the store cannot be reached, the model is not registered,
            the alias is not set, or the version it names cannot be loaded.
        TokensError: the tokens file cannot be read or has a malformed line.
    """
    root = Path(project) if project is not None else Path.cwd()
    uri = tracking_uri or default_tracking_uri(root)
    target = _target(model, alias, version, uri)
    fail = functools.partial(ServeError, model=target.model, alias=target.alias, tracking_uri=uri)
    _check_settings(uri, (poll_seconds, max_body_bytes, read_seconds, timeout), fail)
    challenger = _challenger(shadow, canary, fail)
    accepted = read_tokens(tokens) if isinstance(tokens, str | Path) else tokens
    client = _open_store(uri, fail)
    first = _load_first(client, uri, target, fail)
    directory = Path(log_dir) if log_dir is not None else default_log_dir(root)
    log = _open_log(directory, fail)
    metrics = Metrics(target.model, target.alias or "")
    follower, queue = None, None
    if challenger is not None:
        if challenger.version is not None:
            _existing(client, target.model, challenger.version, fail)
        follower = Follower(client, uri, target.model, challenger, metrics)
        follower.poll()  # loaded before the first request; a failure is a trouble, retried
        if challenger.mode == SHADOW:
            queue = Shadow(follower, log, metrics, limits, timeout)
    service = Service(
        client,
        uri,
        target.model,
        target.alias,
        first,
        log,
        poll_seconds,
        max_body_bytes,
        limits=limits,
        timeout=timeout,
        retention=log_retention,
        challenger=follower,
        shadow=queue,
        metrics=metrics,
    )
    logger.info(
        "serving version %s of '%s' (%s, %s flavor) from %s; logging predictions to %s; %s",
        first.version,
        target.model,
        f"alias '{target.alias}'" if target.alias else "pinned",
        first.flavor,
        redacted(uri),
        directory,
        f"{len(accepted)} token(s) accepted" if accepted is not None else "no token needed",
    )
    return build_app(service, accepted, read_seconds)


def _challenger(
    shadow: Challenger | str | None, canary: Challenger | str | None, fail: _Fail
) -> Challenger | None:
    """The challenger asked for, parsed; a :class:`ServeError` (exit code 2) if malformed."""
    if shadow is not None and canary is not None:
        raise fail(
            "a service has one challenger: give --shadow or --canary, not both",
            exit_code=ExitCode.INVALID,
        )
    for mode, given in ((SHADOW, shadow), (CANARY, canary)):
        if isinstance(given, Challenger):
            return given
        if given is not None:
            try:
                return Challenger.parse(mode, given)
            except ValueError as exc:
                raise fail(f"--{mode}: {exc}", exit_code=ExitCode.INVALID) from None
    return None


def _target(model: str, alias: str | None, version: str | None, uri: str) -> ModelTarget:
    """What to serve: a ``models:/`` URI parsed, or the model with its alias or pinned version."""
    if model.startswith("models:/"):
        try:
            return ModelTarget.parse(model)
        except ValueError as exc:
            raise ServeError(
                str(exc), model=model, alias=alias, tracking_uri=uri, exit_code=ExitCode.INVALID
            ) from None
    return ModelTarget(model, None, version) if version is not None else ModelTarget(model, alias)


def _check_settings(uri: str, numbers: tuple[float, ...], fail: _Fail) -> None:
    """An embedded store that exists, and positive settings."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise fail(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run `mlnb run` in the project "
            "first, or point MLFLOW_TRACKING_URI at your store"
        )
    if any(number <= 0 for number in numbers):
        raise fail("poll_seconds, max_body_bytes, read_seconds and timeout must be positive")


def _open_store(uri: str, fail: _Fail) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise fail(
            f"cannot open the MLflow store {redacted(uri)}: {redact_in(str(exc), uri)}"
        ) from None


def _load_first(client: MlflowClient, uri: str, target: ModelTarget, fail: _Fail) -> Served:
    """The version to serve first, loaded; a :class:`ServeError` if it does not load."""
    model = target.model
    version = _resolve(client, uri, target, fail)
    try:
        first = load_version(client, model, version, uri)
    except Exception as exc:
        named = f"alias '{target.alias}'" if target.alias else "pinned"
        advice = "move the alias to a version that loads" if target.alias else "serve another"
        raise fail(
            f"version {version} of '{model}' ({named}) cannot be loaded: "
            f"{redact_in(error_text(exc), uri)}; {advice}"
        ) from None
    if first.schema is None:
        logger.warning(
            "version %s of '%s' has no column signature: requests are checked by MLflow only",
            version,
            model,
        )
    return first


def _open_log(directory: Path, fail: _Fail) -> PredictionLog:
    try:
        return PredictionLog(directory)
    except OSError as exc:
        raise fail(f"cannot create the prediction log at {directory}: {exc}") from None


def _listen(host: str, port: int, fail: _Fail) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as exc:  # OverflowError: a port beyond 65535
        errno = exc.errno if isinstance(exc, OSError) else None
        reason = os.strerror(errno) if errno else str(exc)
        raise fail(f"cannot listen on {host}:{port}: {reason}; choose another --port") from None


def _loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {str(info[4][0]).partition("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _check_exposure(host: str, tokens: Path | None, insecure: bool, fail: _Fail) -> None:
    """Refuse to listen beyond loopback with every endpoint open, unless told ``insecure``."""
    if tokens is None and not insecure and not _loopback(host):
        raise fail(
            f"refusing to serve on {host} without tokens: anyone who reaches it could "
            "predict and send labels (the next model's training data); pass --tokens FILE "
            "(lines 'SCOPE TOKEN [NAME]'), or --insecure to serve it open",
            exit_code=ExitCode.INVALID,
        )


class _HeadDeadline(asyncio.Protocol):
    """An HTTP protocol that closes a connection whose request head does not arrive in time.

    uvicorn times out an idle keep-alive connection but waits forever for a
    request head that never ends (a slow-loris client). Mixed into uvicorn's
    protocol class by :func:`_protocol`: from the connection's start, and
    from the first byte after each response, the head has ``head_seconds``
    and ``max_head_bytes``; then the client gets a 408 (or 431) and the
    connection is closed.
    """

    head_seconds: float = READ_SECONDS
    max_head_bytes: int = MAX_HEAD_BYTES
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes: int = 0
    _head_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_transport = cast(asyncio.Transport, transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = getattr(self, "cycle", None)
        if self._head_timer is None and (cycle is None or cycle.response_complete):
            self._await_head()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._head_timer is None:
            return
        if getattr(self, "cycle", None) is not cycle:  # the head is complete: a request began
            self._stop_waiting()
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"the request head exceeds {self.max_head_bytes:,} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._head_bytes = 0
        loop = asyncio.get_running_loop()
        message = f"the request head did not arrive within {self.head_seconds:g} s"
        self._head_timer = loop.call_later(self.head_seconds, self._refuse, 408, message)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and close the connection."""
        self._stop_waiting()
        transport = self._head_transport
        if transport is None or transport.is_closing():
            return
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = b'{"error_code": "BAD_REQUEST", "message": "%s"}' % message.encode()
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        transport.close()


def _protocol(http: str, head_seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (``httptools`` or ``h11``) with a head deadline."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    base = HttpToolsProtocol if http == "httptools" else H11Protocol
    guarded = type("GuardedProtocol", (_HeadDeadline, base), {"head_seconds": head_seconds})
    return cast(type[asyncio.Protocol], guarded)


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
def _return_on_signals() -> Iterator[None]:
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
    alias: str | None = "champion",
    host: str = "127.0.0.1",
    port: int = 8080,
    tracking_uri: str | None = None,
    log_dir: Path | None = None,
    *,
    project: Path | None = None,
    poll_seconds: float = 1.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "info",
    tokens: Path | None = None,
    insecure: bool = False,
    read_seconds: float = READ_SECONDS,
    max_concurrency: int = MAX_CONCURRENCY,
    version: str | None = None,
    timeout: float = TIMEOUT_SECONDS,
    limits: Limits = DEFAULT_LIMITS,
    workers: int = 1,
    log_retention: Retention | None = None,
    shadow: str | None = None,
    canary: str | None = None,
) -> None:
    """Serve a model's aliased version over HTTP until SIGINT or SIGTERM.

    uvicorn (uvloop and httptools when installed), no access log; mlnb's own
    messages (swaps, load failures) go to the server log on stderr. With
    ``workers`` above 1, that many processes share the listening socket
    (:mod:`mlnb.serving.workers`). Returns after a graceful shutdown.

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
        tokens: the tokens file (see :mod:`mlnb.serving.auth`); needed to
            listen beyond loopback.
        insecure: listen beyond loopback without tokens, every endpoint open.
        read_seconds: how long a request's head, and then its body, may take
            to arrive.
        max_concurrency: connections and requests at once; beyond, 503.
        version: serve this version, pinned (see :func:`create_app`).
        timeout: how long a request may be scored (then 504).
        limits: what one request may hold besides its size.
        workers: server processes on the socket, each following the alias.
        log_retention: what the prediction log keeps (see :func:`create_app`).
        shadow: a challenger scored beside the champion (see :func:`create_app`).
        canary: a challenger answering a share (see :func:`create_app`).

    Raises:
        ServeError: as :func:`create_app`, the address is taken, or it is not
            loopback and there are no tokens (exit code 2).
        TokensError: the tokens file cannot be read or has a malformed line.
    """
    config_log = _log_config(log_level)
    logging.config.dictConfig(config_log)  # before loading, so its messages show
    uri = tracking_uri or default_tracking_uri(Path(project) if project else Path.cwd())
    target = _target(model, alias, version, uri)
    fail = functools.partial(ServeError, model=target.model, alias=target.alias, tracking_uri=uri)
    _check_exposure(host, tokens, insecure, fail)
    accepted = read_tokens(tokens) if tokens is not None else None  # a bad file fails first
    challenger = _challenger(shadow, canary, fail)
    if workers < 1:
        raise fail(f"workers must be at least 1; got {workers}", exit_code=ExitCode.INVALID)
    settings = Settings(
        model=target.model,
        alias=target.alias,
        version=target.version,
        tracking_uri=uri,
        log_dir=str(log_dir) if log_dir is not None else None,
        project=str(project) if project is not None else None,
        poll_seconds=poll_seconds,
        max_body_bytes=max_body_bytes,
        log_level=log_level,
        tokens=str(tokens) if tokens is not None else None,
        read_seconds=read_seconds,
        max_concurrency=max_concurrency,
        timeout=timeout,
        limits=dataclasses.asdict(limits),
        log_retention=log_retention.text if log_retention is not None else None,
        shadow=str(challenger) if challenger is not None and challenger.mode == SHADOW else None,
        canary=str(challenger) if challenger is not None and challenger.mode == CANARY else None,
    )
    sock = _listen(host, port, fail)  # a taken port fails before the model loads
    try:
        if workers == 1:
            serve_on(sock, settings, accepted)
        else:
            from mlnb.serving.workers import supervise

            supervise(sock, workers, settings, fail)
    finally:
        sock.close()


@dataclass(frozen=True)
class Settings:
    """What one server process needs to serve: :func:`serve`'s arguments, resolved.

    Plain values, so that :mod:`mlnb.serving.workers` hands them to each
    worker process as JSON.
    """

    model: str
    alias: str | None
    version: str | None
    tracking_uri: str
    log_dir: str | None
    project: str | None
    poll_seconds: float
    max_body_bytes: int
    log_level: str
    tokens: str | None
    read_seconds: float
    max_concurrency: int
    timeout: float
    limits: dict[str, int]
    log_retention: str | None = None
    shadow: str | None = None
    canary: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls(**json.loads(text))


def _retention(text: str | None) -> Retention | None:
    from mlnb.predictions.retention import Retention

    return Retention.parse(text) if text is not None else None


def serve_on(
    sock: socket.socket,
    settings: Settings,
    tokens: Tokens | None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Load the version, then run uvicorn on a listening socket until SIGINT or SIGTERM.

    ``ready`` is called once the version is loaded, before the first request
    is taken (a worker process tells its supervisor so).
    """
    import uvicorn

    app = create_app(
        settings.model,
        settings.alias,
        settings.tracking_uri,
        Path(settings.log_dir) if settings.log_dir is not None else None,
        settings.poll_seconds,
        settings.max_body_bytes,
        project=Path(settings.project) if settings.project is not None else None,
        tokens=tokens,
        read_seconds=settings.read_seconds,
        version=settings.version,
        timeout=settings.timeout,
        limits=Limits(**settings.limits),
        log_retention=_retention(settings.log_retention),
        shadow=settings.shadow,
        canary=settings.canary,
    )
    if ready is not None:
        ready()
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    config = uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_protocol(http, settings.read_seconds),
        lifespan="on",
        access_log=False,
        log_config=_log_config(settings.log_level),
        log_level=settings.log_level,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        limit_concurrency=settings.max_concurrency,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    with _return_on_signals():
        uvicorn.Server(config).run(sockets=[sock])
