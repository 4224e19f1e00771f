"""The data a model version needs later, kept in the store rather than in one person's folder.

A version's holdout (which the gate scores it on, now and when it is the
champion) and its training data (which the drift check compares live traffic
with) are logged as artifacts of the version's run, under
``mlnb/data/<sha256>/<name>``: content-hashed, so a version registered again
from the same run, or a cached re-run, stores nothing twice. The version's
tags hold the artifact's URI (``runs:/<run>/mlnb/data/<sha>/<name>``) and the
hash; :func:`local_data` downloads it once per machine to
``<state>/data/<sha>/``, so any member of a team can gate or drift-check any
version. A tag holding a plain path (a version registered before) still works
as long as that path exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlnb._files import hash_path
from mlnb.models import RegistryError

#: where a run's data artifacts go
DATA_ARTIFACTS = "mlnb/data"
#: URI schemes MLflow resolves to artifacts (anything else is a path on this machine)
ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:", "s3://", "gs://", "wasbs://")


def is_artifact_uri(value: str) -> bool:
    """Whether ``value`` names an artifact in the store rather than a local path."""
    return value.startswith(ARTIFACT_SCHEMES)


def digest_of(path: Path) -> str:
    """The content hash that names ``path``'s folder in the store (``dir:`` stripped)."""
    return hash_path(path).removeprefix("dir:")


def store_data(client: Any, run_id: str, path: Path) -> tuple[str, str]:
    """Log ``path`` (a file or a folder) as an artifact of ``run_id``, once per content.

    Returns:
        The artifact's URI and its content hash.

    Raises:
        RegistryError: ``path`` does not exist, or the store refused the upload.
    """
    if not path.exists():
        raise RegistryError(f"the data file {path} is gone; re-run the stage that writes it")
    digest = digest_of(path)
    folder = f"{DATA_ARTIFACTS}/{digest}"
    uri = f"runs:/{run_id}/{folder}/{path.name}"
    try:
        if any(a.path.endswith(f"/{path.name}") for a in client.list_artifacts(run_id, folder)):
            return uri, digest  # the same content, logged before
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{folder}/{path.name}")
        else:
            client.log_artifact(run_id, str(path), folder)
    except Exception as exc:
        raise RegistryError(
            f"could not store {path} in the MLflow store as an artifact of run {run_id} "
            f"({type(exc).__name__}: {exc}); check that the store's artifact location is "
            "reachable and writable"
        ) from None
    return uri, digest


def local_data(value: str, digest: str | None, tracking_uri: str, state: Path) -> Path:
    """A local copy of the data a version records: its path, or a download from the store.

    Args:
        value: the recorded path or artifact URI.
        digest: its recorded content hash (names the download's folder).
        tracking_uri: the store that holds the artifact.
        state: the state folder; downloads land in ``<state>/data/<sha>/``.

    Raises:
        RegistryError: the artifact cannot be downloaded.
    """
    if not is_artifact_uri(value):
        return Path(value)
    name = value.rstrip("/").rsplit("/", 1)[-1]
    folder = state / "data" / (digest or _uri_digest(value))
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        from mlflow.artifacts import download_artifacts

        with _no_progress_bar():  # MLflow's bar would write into mlnb's own output
            fetched = Path(
                download_artifacts(
                    artifact_uri=value, dst_path=str(scratch), tracking_uri=tracking_uri
                )
            )
        try:
            fetched.rename(target)
        except OSError:  # another process put the same content there first
            if not target.exists():
                raise
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"could not download {value} from the MLflow store ({type(exc).__name__}: {exc}); "
            "check that the store and its artifact location are reachable"
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _uri_digest(value: str) -> str:
    """The hash folder a ``.../mlnb/data/<sha>/<name>`` URI names, else a hash of the URI."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "data":
        return parts[-2]
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow's download progress bar off, unless the user set it."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)
