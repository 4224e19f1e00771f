"""Where mlnb keeps things: the MLflow store and the project's state folder, decided
without importing MLflow.

The embedded default is a SQLite file in the project, ``<root>/mlflow.db``,
with artifacts beside it in ``<root>/mlartifacts`` (any SQLite store keeps its
artifacts beside its file); ``MLFLOW_TRACKING_URI``
points mlnb and the stage kernels at another store. A server's user info
(``http://user:secret@host``) never travels in a URI that MLflow could print:
:func:`client_env` moves it into MLflow's ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` for kernels and children, :func:`use_credentials`
does the same for this process, and :func:`redacted` and :func:`redacted_text`
make a URI, or any text naming one, fit to print. Kept apart from
:mod:`mlnb.tracking` so that a run can start its kernels before it pays for
importing MLflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

DB_FILE = "mlflow.db"
#: schemes whose user info MLflow's REST client can take from its environment instead
HTTP_SCHEMES = ("http", "https")
#: MLflow's environment variables for the store and a server's credentials
URI_VAR = "MLFLOW_TRACKING_URI"
USERNAME_VAR = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"
#: the user info of any URI in a text: after ``scheme://``, up to the last ``@`` of the authority
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")
ARTIFACT_DIR = "mlartifacts"
STATE_DIR = ".mlnb"
#: the setting naming a folder every machine of a team sees (README "Team setup")
STATE_VAR = "MLNB_STATE_DIR"


def state_dir(root: Path) -> Path:
    """The folder where mlnb keeps what a team shares: workspaces, cache, deployments, logs, locks.

    ``MLNB_STATE_DIR`` when it is set (a folder every machine of the team
    sees: a network file system, a mounted share), else ``<root>/.mlnb``.
    What belongs to one machine (kernels, scratch files) never goes here.
    """
    shared = os.environ.get(STATE_VAR)
    if shared:
        return Path(shared).expanduser().resolve()
    return root / STATE_DIR


def prediction_log_dir(root: Path) -> Path:
    """Where ``mlnb serve`` logs predictions unless told: ``predictions/`` in the state folder."""
    return state_dir(root) / "predictions"


def recorded(path: Path | str, root: Path) -> str:
    """``path`` as mlnb records it in MLflow, so that it means the same on every machine.

    Inside the state folder it is ``$MLNB_STATE_DIR/<relative path>``, inside
    the project its path relative to the project root; anything else (a file
    outside both) stays absolute. :func:`located` reads it back.
    """
    target = Path(path).absolute()
    state = state_dir(root).absolute()
    if target.is_relative_to(state):
        return f"${STATE_VAR}/{target.relative_to(state).as_posix()}".rstrip("/")
    if target.is_relative_to(root.absolute()):
        return target.relative_to(root.absolute()).as_posix() or "."
    return str(target)


def located(text: str, root: Path) -> Path:
    """The path on this machine of what :func:`recorded` wrote (an absolute path as it is)."""
    prefix = f"${STATE_VAR}"
    if text == prefix or text.startswith(prefix + "/"):
        return state_dir(root) / text[len(prefix) + 1 :]
    path = Path(text)
    return path if path.is_absolute() else root / path


def tracking_uri(root: Path) -> str:
    """The store mlnb uses: ``MLFLOW_TRACKING_URI``, else ``<root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DB_FILE).resolve()}"


def default_artifact_location(uri: str) -> str | None:
    """Where artifacts of new experiments go: beside a SQLite store's file, else the server's say.

    Decided by the URI alone (MLflow's ``set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI``, so the environment cannot tell the default store
    from a chosen one).
    """
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / ARTIFACT_DIR).resolve().as_uri()
    return None


def redacted(uri: str) -> str:
    """``uri`` fit to print, log or answer: its user info (name, password, token) is ``***``.

    ``http://user:secret@host:5000`` → ``http://***@host:5000``; a URI without
    user info is returned as it is.
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def redacted_text(text: str) -> str:
    """``text`` with the user info of every URI in it replaced by ``***``.

    For messages that may quote a URI (an MLflow or HTTP error naming the URL
    it failed on): ``cannot reach http://user:secret@host/api`` →
    ``cannot reach http://***@host/api``.
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)


def without_userinfo(uri: str) -> str:
    """``uri`` without its user info: ``http://user:secret@host:5000`` → ``http://host:5000``."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def client_env(uri: str) -> dict[str, str]:
    """The environment that points an MLflow client at ``uri`` with no secret in the URI.

    For an HTTP(S) server with user info, ``MLFLOW_TRACKING_URI`` is the URI
    without it and ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
    carry the name and password, percent-decoded (MLflow sends them as HTTP
    Basic auth). Any other URI is returned as it is: a database URI's
    password is its driver's to read.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() not in HTTP_SCHEMES or parts.username is None:
        return {URI_VAR: uri}
    return {
        URI_VAR: without_userinfo(uri),
        USERNAME_VAR: unquote(parts.username),
        PASSWORD_VAR: unquote(parts.password or ""),
    }


def use_credentials(uri: str) -> str:
    """Give this process's MLflow clients the credentials in ``uri``; the URI to use instead.

    The name and password of :func:`client_env` are exported into
    ``os.environ``, which MLflow's REST client reads on every request (and
    every child process inherits), so the URI handed to MLflow, which it
    prints in links and errors, carries no secret. One process talks to one
    store: the last URI given wins.
    """
    env = client_env(uri)
    os.environ.update({k: v for k, v in env.items() if k != URI_VAR})
    return env[URI_VAR]


#: how long an MLflow client keeps trying a server that does not answer, unless the
#: user set these: MLflow's own defaults (7 retries, backoff factor 2, 120 s per
#: request) let a command wait minutes for a server that is down
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_http_waits() -> None:
    """Give this process (and the kernels it starts) :data:`HTTP_DEFAULTS` where unset."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
