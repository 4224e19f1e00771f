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
- **uvicorn's shutdown, then return.** uvicorn handles SIGINT and SIGTERM
  gracefully; :func:`serve` then returns instead of dying, so a caller (the
  CLI, a test) ends as it chooses.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import logging.config
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from starlette.applications import Starlette

from mlnb.errors import MlnbError, suggest
from mlnb.predictions.log import PredictionLog, default_log_dir
from mlnb.serving.app import build_app
from mlnb.serving.scoring import Served, error_text, load_version
from mlnb.serving.state import Service
from mlnb.store import tracking_uri as default_tracking_uri

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 10 * 2**20


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


#: makes the :class:`ServeError` of one service start from a message
_Fail = Callable[[str], ServeError]


def _resolve(client: MlflowClient, uri: str, model: str, alias: str, fail: _Fail) -> str:
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
    _check_settings(uri, poll_seconds, max_body_bytes, fail)
    client = _open_store(uri, fail)
    first = _load_first(client, uri, model, alias, fail)
    directory = Path(log_dir) if log_dir is not None else default_log_dir(root)
    log = _open_log(directory, fail)
    service = Service(client, uri, model, alias, first, log, poll_seconds, max_body_bytes)
    logger.info(
        "serving version %s of '%s' (alias '%s', %s flavor) from %s; logging predictions to %s",
        first.version,
        model,
        alias,
        first.flavor,
        uri,
        directory,
    )
    return build_app(service)


def _check_settings(uri: str, poll_seconds: float, max_body_bytes: int, fail: _Fail) -> None:
    """An embedded store that exists, and positive settings."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise fail(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}; run `mlnb run` in the project "
            "first, or point MLFLOW_TRACKING_URI at your store"
        )
    if poll_seconds <= 0 or max_body_bytes <= 0:
        raise fail("poll_seconds and max_body_bytes must be positive")


def _open_store(uri: str, fail: _Fail) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:
        raise fail(f"cannot open the MLflow store {uri}: {exc}") from None


def _load_first(client: MlflowClient, uri: str, model: str, alias: str, fail: _Fail) -> Served:
    """The version ``alias`` names now, loaded; a :class:`ServeError` if it does not load."""
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
