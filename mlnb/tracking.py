"""MLflow runs for pipelines and stages: one parent run per pipeline run, one
nested run per stage, with the lineage a reader needs to trust a result.

Only :class:`mlflow.tracking.MlflowClient` is used (never the fluent
``mlflow.start_run`` state), so parallel stages in threads cannot mix up each
other's active run. The store defaults to an embedded SQLite file in the
project with artifacts beside it; ``MLFLOW_TRACKING_URI`` points mlnb (and the
notebooks' kernels) at a shared server instead; a server's user info goes to
MLflow as ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
(:func:`mlnb.store.use_credentials`), so no link, message or artifact that
MLflow or mlnb writes names it. Processes that open one SQLite
store take turns (a file lock beside it), so MLflow's first-use schema set-up
runs once however many runs start together.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from mlnb import tags
from mlnb._files import exclusive
from mlnb.errors import TrackingError
from mlnb.store import (
    client_env,
    default_artifact_location,
    redacted,
    redacted_text,
    tracking_uri,
    use_credentials,
)
from mlnb.tags import EndState, RunState

PARAM_LIMIT = 6000
#: what ``mlflow ui`` reads its ``--backend-store-uri`` from
BACKEND_STORE_VAR = "MLFLOW_BACKEND_STORE_URI"


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created on first use with artifacts beside a SQLite store.

    Raises:
        MlflowException: the store refuses.
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = default_artifact_location(uri)
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created meanwhile by a concurrent run
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


@dataclass(frozen=True)
class GitInfo:
    """The commit of the project and whether its work tree had changes."""

    commit: str | None
    dirty: bool | None


def git_info(root: Path) -> GitInfo:
    """Read the project's git commit and dirtiness; ``None`` fields outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return GitInfo(None, None)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return GitInfo(commit.stdout.strip(), bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return GitInfo(None, None)


def param_value(value: Any) -> str:
    """Render a parameter for MLflow: strings as they are, the rest as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= PARAM_LIMIT else text[: PARAM_LIMIT - 3] + "..."


_T = TypeVar("_T")
_P = ParamSpec("_P")


def _create_store(uri: str) -> None:
    """Create a new SQLite store with its Default experiment's artifacts beside the file.

    MLflow would resolve the Default experiment's location, ``./mlruns``, in
    the working directory of whatever process first opens the store; a
    notebook run by hand logs there and would scatter artifacts over the project.
    """
    location = default_artifact_location(uri)
    if location is None:
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.exists():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(uri, location)
    write_ahead(database)


def write_ahead(database: Path) -> None:
    """Put a SQLite store in write-ahead-log mode, once: it is kept in the file.

    In its default mode SQLite syncs a rollback journal to disk on every
    commit (about 5 ms each here, several per MLflow call) and a writer
    blocks every reader; with a write-ahead log a commit is an append and
    readers go on beside the writer, in this process, its stage kernels and
    ``mlflow ui``. The file stays a plain SQLite database any MLflow opens; a
    file that is not one is left for MLflow to report.
    """
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(database)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def _store_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """Serialize opening a SQLite store: MLflow's first-use schema set-up races otherwise.

    The lock is ``<database>.lock`` beside the file (:func:`mlnb._files.exclusive`),
    so every process that opens the store through mlnb takes turns; other stores
    (a server, a database) serialize themselves.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return exclusive(Path(f"{uri.removeprefix('sqlite:///')}.lock"))


def _store_errors(
    method: Callable[Concatenate[Tracker, _P], _T],
) -> Callable[Concatenate[Tracker, _P], _T]:
    """Turn MLflow and file-system failures into a :class:`TrackingError` naming the store."""

    @functools.wraps(method)
    def wrapper(self: Tracker, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except TrackingError:
            raise
        except (MlflowException, OSError) as exc:
            text = redacted_text(getattr(exc, "message", None) or str(exc))
            action = method.__name__.strip("_").replace("_", " ")
            raise TrackingError(f"MLflow store {self.shown}: {action} failed: {text}") from exc

    return wrapper


class Tracker:
    """Pipeline and stage runs on one MLflow store.

    Args:
        root: the project root (for the default store location).
        uri: a tracking URI; defaults to :func:`tracking_uri`. A server's user
            info is given to MLflow by :func:`mlnb.store.use_credentials`, and
            :attr:`uri` is the URI without it.
    """

    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = root
        given = uri or tracking_uri(root)
        self.uri = use_credentials(given)
        #: the store as messages name it: ``http://***@host`` when credentials came with it
        self.shown = redacted(given)
        try:
            with _store_lock(self.uri):
                _create_store(self.uri)
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)  # creates the schema, once
        except MlflowException as exc:
            raise TrackingError(
                f"cannot open the MLflow store {self.shown}: {redacted_text(exc.message)}"
            ) from exc
        except Exception as exc:  # SQLAlchemy or alembic errors of a broken store
            raise TrackingError(
                f"cannot open the MLflow store {self.shown}: {redacted_text(str(exc))}"
            ) from exc

    def experiment_id(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it on first use."""
        try:
            return ensure_experiment(self.client, name, self.uri)
        except MlflowException as exc:
            raise TrackingError(
                f"cannot use experiment '{name}' on {self.shown}: {redacted_text(exc.message)}"
            ) from exc

    def start_run(
        self,
        experiment_id: str,
        name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run (nested under ``parent_run_id`` if given); return its id."""
        all_tags = {MLFLOW_RUN_NAME: name, **tags}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        try:
            run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        except MlflowException as exc:
            raise TrackingError(
                f"cannot create an MLflow run on {self.shown}: {redacted_text(exc.message)}"
            ) from exc
        return str(run.info.run_id)

    @_store_errors
    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Log parameters, tags and metrics in one batch."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            params=[Param(k, param_value(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        )

    @_store_errors
    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        """Upload one file as an artifact of a run."""
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    @_store_errors
    def finish(self, run_id: str, status: EndState) -> None:
        """End a run with ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(run_id, status=status)

    @_store_errors
    def reopen(self, run_id: str) -> None:
        """Mark an ended run as running again (for ``--resume``)."""
        running: RunState = "RUNNING"
        self.client.update_run(run_id, status=running)

    def get_run(self, run_id: str) -> Run:
        """Return a run, or raise :class:`TrackingError` naming the store."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(f"no run '{run_id}' in the MLflow store {self.shown}") from exc

    @_store_errors
    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Run]:
        """Return the stage runs nested under a pipeline run."""
        return list(
            self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
                max_results=1000,
            )
        )

    @_store_errors
    def running_runs(self, experiment_id: str, filters: Mapping[str, str]) -> list[Run]:
        """The runs of an experiment still ``RUNNING`` whose tags hold the values of ``filters``."""
        running: RunState = "RUNNING"
        where = [f"attributes.status = '{running}'"]
        where += [f"tags.`{key}` = '{value}'" for key, value in filters.items()]
        return list(
            self.client.search_runs(
                [experiment_id], filter_string=" and ".join(where), max_results=1000
            )
        )

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Where a person sees a run: the server's page, or how to open the MLflow UI."""
        fragment = f"#/experiments/{experiment_id}/runs/{run_id}"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{fragment}"
        return f"mlflow ui --backend-store-uri {self.shown}, then open {fragment}"


def lineage_tags(root: Path, spec_path: Path) -> dict[str, str]:
    """Tags that tie a run to its source: git commit and dirtiness, spec file."""
    info = git_info(root)
    found_tags = {MLFLOW_SOURCE_TYPE: "PROJECT", MLFLOW_SOURCE_NAME: str(spec_path)}
    if info.commit:
        found_tags[MLFLOW_GIT_COMMIT] = info.commit
        found_tags[tags.GIT_DIRTY] = str(info.dirty).lower()
    return found_tags


@functools.cache
def _html_exporter() -> Any:
    from nbconvert import HTMLExporter  # heavy: only where a notebook is rendered

    return HTMLExporter()


_html_lock = threading.Lock()


def warm_html() -> None:
    """Build the HTML exporter ahead of the first rendering (imports, templates)."""
    with _html_lock:
        _html_exporter()


def render_html(notebook: Path, target: Path) -> Path:
    """Render an executed notebook to a standalone HTML file.

    One exporter serves every call: building it loads its templates, which
    costs more than rendering a short notebook.
    """
    with _html_lock:
        body, _ = _html_exporter().from_filename(str(notebook))
    target.write_text(body, encoding="utf-8")
    return target


def run_ui(uri: str, host: str, port: int) -> int:
    """Run the MLflow UI on store ``uri`` until it exits, Ctrl-C or SIGTERM; its exit code.

    The UI is ``mlflow ui`` in a child process, which this function starts and
    stops by its PID. A SIGTERM stops it like Ctrl-C: the child is terminated
    and waited for, and :class:`KeyboardInterrupt` is raised.
    """
    import signal
    import sys

    command = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)]
    location = default_artifact_location(uri)
    if location:
        command += ["--default-artifact-root", location]
    # the store by the environment, where no other user's `ps` reads a password in it
    env = {**os.environ, BACKEND_STORE_VAR: uri}
    env.update({k: v for k, v in client_env(uri).items() if k != "MLFLOW_TRACKING_URI"})
    process = subprocess.Popen(command, env=env)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
