"""Deployments: which bundle version of a pipeline is live, and what retrains with it.

``mlnb deploy BUNDLE`` checks a bundle against its manifest, unpacks it to
``.mlnb/deployments/<pipeline>/<version>/`` (beside, never over, the working
copy) and makes it live: the pointer file ``.mlnb/deployments/<pipeline>/LIVE``
names the version, and a run in the MLflow experiment ``mlnb-deployments``
records the deployment (the experiment's tag ``mlnb.live.<pipeline>`` says
which version is live, and the registered model the pipeline delivers gets
the tag ``mlnb.deployment``). ``mlnb monitor`` retrains with the live
version's spec. Rollback makes the previous live version live again.

Design decisions:

- **Unpack beside, then rename.** A version is unpacked into a temporary
  folder and renamed into place, so a deployment folder is whole or absent;
  the pointer file is replaced atomically. A version already unpacked is
  checked against the bundle and reused.
- **The pointer file decides, MLflow remembers.** What retrains is read from
  the local pointer (no store round trip in the monitor's path); the history
  that ``--list`` and rollback use is MLflow's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mlnb import tags
from mlnb._files import write_atomic
from mlnb.delivery import bundle as bundlemod
from mlnb.errors import MlnbError
from mlnb.pipelines.locate import LIVE, deployments_dir

if TYPE_CHECKING:
    from mlnb.tracking import Tracker

EXPERIMENT = "mlnb-deployments"


class DeployAction(StrEnum):
    """How a version became live (the tag :data:`mlnb.tags.DEPLOYMENT_ACTION`)."""

    DEPLOY = "deploy"
    ROLLBACK = "rollback"


class DeployError(MlnbError):
    """A bundle cannot be deployed, or there is nothing to roll back to."""


@dataclass(frozen=True)
class Deployment:
    """A deployed version of a pipeline.

    Attributes:
        pipeline: the pipeline name.
        version: the bundle version.
        path: where it is unpacked.
        spec: the pipeline spec inside it.
        action: how it became live (:class:`DeployAction`).
        time: when (UTC, ISO 8601).
        run_id: the MLflow run that records it.
        git_commit: the commit the bundle was built from.
        live: whether it is the live version now.
    """

    pipeline: str
    version: str
    path: Path
    spec: Path
    action: DeployAction = DeployAction.DEPLOY
    time: str = ""
    run_id: str = ""
    git_commit: str | None = None
    live: bool = False


def deploy(bundle: Path | str, root: Path, uri: str) -> Deployment:
    """Check a bundle, unpack it beside the working copy and make it live.

    Raises:
        BundleError: the bundle fails its manifest check (the reason names the file).
        DeployError: the bundle cannot be unpacked.
        TrackingError: the MLflow store cannot be used.
    """
    manifest, members = bundlemod.read(bundle)
    folder = deployments_dir(root) / manifest.name
    target = folder / manifest.version
    if target.exists():
        _same_content(target, manifest)
    else:
        _unpack(members, manifest, target)
    return _make_live(root, uri, manifest, target, DeployAction.DEPLOY, Path(bundle).name)


def _same_content(target: Path, manifest: bundlemod.Manifest) -> None:
    try:
        present = bundlemod.Manifest.of_folder(target)
    except (OSError, bundlemod.BundleError):
        present = None
    if present is None or present.content_sha256 != manifest.content_sha256:
        raise DeployError(
            f"version {manifest.version} of '{manifest.name}' is deployed already with other "
            f"contents ({target}); build with another --version, or remove that folder"
        )


def _unpack(members: dict[str, bytes], manifest: bundlemod.Manifest, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
    try:
        for rel, data in members.items():
            path = scratch / PurePosixPath(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (scratch / bundlemod.MANIFEST).write_bytes(manifest.as_json())
        os.replace(scratch, target)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DeployError(f"cannot unpack {manifest.name} {manifest.version}: {exc}") from None


def _make_live(
    root: Path,
    uri: str,
    manifest: bundlemod.Manifest,
    target: Path,
    action: DeployAction,
    bundle_name: str,
) -> Deployment:
    from mlnb import tracking

    tracker = tracking.Tracker(root, uri)
    experiment = tracker.experiment_id(EXPERIMENT)
    run_id = tracker.start_run(
        experiment,
        f"{manifest.name} {manifest.version}",
        {
            tags.KIND: tags.Kind.DEPLOYMENT,
            tags.PIPELINE: manifest.name,
            tags.DEPLOYMENT_VERSION: manifest.version,
            tags.DEPLOYMENT_ACTION: action,
            tags.DEPLOYMENT_CONTENT: manifest.content_sha256,
            tags.DEPLOYMENT_PATH: str(target),
            tags.DEPLOYMENT_BUNDLE: bundle_name,
            tags.GIT_COMMIT: manifest.git_commit or "",
        },
    )
    write_atomic(target.parent / LIVE, manifest.version + "\n")
    tracker.client.set_experiment_tag(
        experiment, f"{tags.LIVE_PREFIX}{manifest.name}", manifest.version
    )
    _tag_model(tracker, target / manifest.pipeline, f"{manifest.name} {manifest.version}")
    tracker.finish(run_id, "FINISHED")
    return Deployment(
        manifest.name,
        manifest.version,
        target,
        target / manifest.pipeline,
        action,
        datetime.now(UTC).isoformat(timespec="seconds"),
        run_id,
        manifest.git_commit,
        live=True,
    )


def _tag_model(tracker: Tracker, spec: Path, value: str) -> None:
    """Tag the registered model the pipeline delivers with the live deployment."""
    from mlflow.exceptions import MlflowException

    from mlnb.specs.pipeline import read_spec

    try:
        model = read_spec(spec)[0].model
    except MlnbError:
        return
    if model is None:
        return
    try:
        tracker.client.get_registered_model(model.name)
    except MlflowException:
        tracker.client.create_registered_model(model.name)
    tracker.client.set_registered_model_tag(model.name, tags.MODEL_DEPLOYMENT, value)


def history(root: Path, uri: str, pipeline: str | None = None) -> list[Deployment]:
    """Deployments recorded in MLflow, newest first (of one pipeline, or all)."""
    from mlnb import tracking

    tracker = tracking.Tracker(root, uri)
    experiment = tracker.client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    where = f"tags.`{tags.KIND}` = '{tags.Kind.DEPLOYMENT}'"
    if pipeline:
        where += f" and tags.`{tags.PIPELINE}` = '{pipeline}'"
    runs = tracker.client.search_runs(
        [experiment.experiment_id], filter_string=where, order_by=["start_time DESC"]
    )
    live = {
        key.removeprefix(tags.LIVE_PREFIX): value
        for key, value in experiment.tags.items()
        if key.startswith(tags.LIVE_PREFIX)
    }
    found = []
    seen_live: set[str] = set()
    for run in runs:
        found_tags = run.data.tags
        name, version = (
            found_tags.get(tags.PIPELINE, ""),
            found_tags.get(tags.DEPLOYMENT_VERSION, ""),
        )
        path = Path(found_tags.get(tags.DEPLOYMENT_PATH, ""))
        is_live = live.get(name) == version and name not in seen_live
        if is_live:
            seen_live.add(name)
        found.append(
            Deployment(
                name,
                version,
                path,
                path,
                _action(found_tags.get(tags.DEPLOYMENT_ACTION)),
                datetime.fromtimestamp((run.info.start_time or 0) / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                run.info.run_id,
                found_tags.get(tags.GIT_COMMIT) or None,
                is_live,
            )
        )
    return found


def _action(value: str | None) -> DeployAction:
    """The action a deployment run's tag names; ``deploy`` when it names none mlnb writes."""
    try:
        return DeployAction(value or DeployAction.DEPLOY)
    except ValueError:
        return DeployAction.DEPLOY


def rollback(root: Path, uri: str, pipeline: str, version: str | None = None) -> Deployment:
    """Make an earlier deployed version live again (the one before the live one by default).

    Raises:
        DeployError: nothing deployed, no earlier version, or the version's folder is gone.
    """
    records = history(root, uri, pipeline)
    if not records:
        raise DeployError(f"'{pipeline}' has never been deployed; deploy a bundle first")
    live = next((r.version for r in records if r.live), records[0].version)
    if version is None:
        order = list(dict.fromkeys(r.version for r in records))  # newest first, distinct
        earlier = [v for v in order if v != live]
        if not earlier:
            raise DeployError(
                f"'{pipeline}' has only one deployed version ({live}); nothing to roll back to"
            )
        # the version live before the live one: the newest deployment event of another version
        version = earlier[0]
    elif version == live:
        raise DeployError(f"version {version} of '{pipeline}' is live already")
    target = deployments_dir(root) / pipeline / version
    try:
        manifest = bundlemod.Manifest.of_folder(target)
    except OSError:
        known = ", ".join(dict.fromkeys(r.version for r in records))
        raise DeployError(
            f"version {version} of '{pipeline}' is not unpacked in {target.parent} "
            f"(deployed versions: {known}); deploy its bundle again"
        ) from None
    return _make_live(root, uri, manifest, target, DeployAction.ROLLBACK, "")
