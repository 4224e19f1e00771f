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

- **Verified, then unpacked, only inside its folder.** The bundle is checked
  whole (:func:`mlnb.delivery.bundle.verify`, streaming, within limits) before
  any folder is made; its pipeline name and version follow the rules of
  pipeline names and bundle versions, so ``<pipeline>/<version>`` is two plain
  folder names, and a path that a symbolic link leads elsewhere is refused.
- **Unpack beside, then rename.** A version is unpacked into a temporary
  folder (the bundle streamed and hashed once more) and renamed into place,
  so a deployment folder is whole or absent, and a failure removes every
  folder it made. A version already unpacked is checked against the bundle
  and reused.
- **The pointer file decides, MLflow remembers.** What retrains is read from
  the local pointer (no store round trip in the monitor's path); the history
  that ``--list`` and rollback use is MLflow's finished deployment runs. The
  pointer is replaced atomically and last, so a deployment that fails leaves
  the live version as it was.
- **Every attempt is a run, and no run is left running.** A deployment's run
  starts before the bundle is read; a refusal or any other error ends it
  FAILED with the reason in :data:`mlnb.tags.ERROR`. SIGINT and SIGTERM are
  held until the run has ended (:func:`mlnb.pipelines.signals.signals_deferred`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from mlnb import tags
from mlnb._files import write_atomic
from mlnb.delivery import bundle as bundlemod
from mlnb.errors import MlnbError, TrackingError
from mlnb.pipelines.locate import LIVE, deployments_dir
from mlnb.pipelines.owner import Owner, end_orphans
from mlnb.pipelines.signals import signals_deferred
from mlnb.store import located, recorded
from mlnb.tags import RunState

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


def deploy(
    bundle: Path | str, root: Path, uri: str, limits: bundlemod.Limits | None = None
) -> Deployment:
    """Check a bundle, unpack it beside the working copy and make it live.

    The deployment is an MLflow run from the start: a bundle refused, or any
    other failure, ends it FAILED with the reason, with the live version, its
    pointer and the deployments folder as they were. SIGINT and SIGTERM wait
    until the run has ended.

    Args:
        bundle: the bundle file.
        root: the project root.
        uri: the MLflow tracking URI.
        limits: what the bundle may hold (:class:`~mlnb.delivery.bundle.Limits`'s defaults).

    Raises:
        BundleError: the bundle fails its checks (the reason names the file,
            and the member, manifest key or limit at fault).
        DeployError: the bundle cannot be unpacked, or its version is deployed
            with other contents.
        TrackingError: the MLflow store cannot be used.
    """
    from mlnb import tracking

    path = Path(bundle)
    tracker = tracking.Tracker(root, uri)
    experiment = tracker.experiment_id(EXPERIMENT)
    started = {tags.DEPLOYMENT_ACTION: DeployAction.DEPLOY, tags.DEPLOYMENT_BUNDLE: path.name}
    with (
        signals_deferred(),
        _recorded(tracker, experiment, bundlemod.shown(path.name), started) as run_id,
    ):
        manifest = bundlemod.verify(path, limits)
        target = _target(root, manifest.name, manifest.version)
        _describe(tracker, run_id, manifest, target)
        if target.exists():
            _same_content(target, manifest)
        else:
            _unpack(path, manifest, target, limits)
        _make_live(tracker, experiment, manifest, target)
    return _deployment(manifest, target, DeployAction.DEPLOY, run_id)


@contextlib.contextmanager
def _recorded(
    tracker: Tracker, experiment: str, name: str, run_tags: Mapping[str, str]
) -> Iterator[str]:
    """A deployment run around the block: FINISHED when it completes, FAILED with the
    reason when it raises (KILLED on an interrupt); never left running."""
    end_orphans(tracker, experiment, tags.Kind.DEPLOYMENT)  # deploys whose process died
    run_tags = {tags.KIND: tags.Kind.DEPLOYMENT, **Owner.this_process().tags(), **run_tags}
    run_id = tracker.start_run(experiment, name, run_tags)
    try:
        yield run_id
    except BaseException as exc:
        failed = isinstance(exc, Exception)
        if isinstance(exc, MlnbError):
            reason = str(exc)
        elif failed:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = f"interrupted ({type(exc).__name__})"
        with contextlib.suppress(TrackingError):
            tracker.log(run_id, tags={tags.ERROR: reason[: tags.VALUE_LIMIT]})
        with contextlib.suppress(TrackingError):
            tracker.finish(run_id, "FAILED" if failed else "KILLED")
        raise
    tracker.finish(run_id, "FINISHED")


def _target(root: Path, pipeline: str, version: str) -> Path:
    """Where a version of a pipeline is unpacked: ``<deployments>/<pipeline>/<version>``.

    Raises:
        DeployError: a symbolic link leads that path out of where it should be.
    """
    base = deployments_dir(root).resolve()
    target = base / pipeline / version
    if target.resolve() != target:
        raise DeployError(
            f"{target} leads to {target.resolve()} (through a symbolic link); a deployment "
            f"is unpacked only inside {base}: remove the link"
        )
    return target


def _describe(tracker: Tracker, run_id: str, manifest: bundlemod.Manifest, target: Path) -> None:
    """Name the run for the verified bundle's pipeline and version, and tag what it holds."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    tracker.log(
        run_id,
        tags={
            MLFLOW_RUN_NAME: f"{manifest.name} {manifest.version}",
            tags.PIPELINE: manifest.name,
            tags.DEPLOYMENT_VERSION: manifest.version,
            tags.DEPLOYMENT_CONTENT: manifest.content_sha256,
            tags.DEPLOYMENT_PATH: recorded(target, tracker.root),
            tags.GIT_COMMIT: manifest.git_commit or "",
        },
    )


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


def _unpack(
    bundle: Path, manifest: bundlemod.Manifest, target: Path, limits: bundlemod.Limits | None
) -> None:
    """Unpack a verified bundle into a scratch folder beside ``target``, then rename it.

    On any failure the scratch folder, and every folder made for it, are removed.

    Raises:
        BundleError: the bundle changed since it was verified.
        DeployError: a folder or file cannot be written.
    """
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    scratch: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
        bundlemod.extract(bundle, manifest, scratch, limits)
        os.replace(scratch, target)
    except BaseException as exc:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            raise DeployError(
                f"cannot unpack {manifest.name} {manifest.version} into {target}: "
                f"{exc.strerror or exc}"
            ) from None
        raise


def _make_live(
    tracker: Tracker, experiment: str, manifest: bundlemod.Manifest, target: Path
) -> None:
    """Record the live version in MLflow, then replace the pointer file: the last step, so
    a failure before it leaves the live version as it was."""
    from mlflow.exceptions import MlflowException

    label = f"{manifest.name} {manifest.version}"
    try:
        tracker.client.set_experiment_tag(
            experiment, f"{tags.LIVE_PREFIX}{manifest.name}", manifest.version
        )
        _tag_model(tracker, target / manifest.pipeline, label)
    except MlflowException as exc:
        raise TrackingError(
            f"MLflow store {tracker.uri}: cannot record {label} as live: {exc.message}"
        ) from None
    pointer = target.parent / LIVE
    try:
        write_atomic(pointer, manifest.version + "\n")
    except OSError as exc:
        raise DeployError(
            f"cannot make {label} live: cannot write {pointer}: {exc.strerror or exc}"
        ) from None


def _deployment(
    manifest: bundlemod.Manifest, target: Path, action: DeployAction, run_id: str
) -> Deployment:
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
    finished: RunState = "FINISHED"  # a failed deployment made nothing live
    where = f"tags.`{tags.KIND}` = '{tags.Kind.DEPLOYMENT}' and attributes.status = '{finished}'"
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
        path = located(found_tags.get(tags.DEPLOYMENT_PATH, ""), root)
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
        DeployError: a name that is no pipeline's or version's, nothing deployed,
            no earlier version, or the version's folder is gone.
    """
    from mlnb import tracking

    reason = bundlemod.name_problem(pipeline) or (version and bundlemod.version_problem(version))
    if reason:
        raise DeployError(f"cannot roll back: {reason}")
    records = history(root, uri, pipeline)
    if not records:
        raise DeployError(f"'{pipeline}' has never been deployed; deploy a bundle first")
    version = _rollback_version(pipeline, records, version)
    target = _target(root, pipeline, version)
    try:
        manifest = bundlemod.Manifest.of_folder(target)
    except OSError:
        known = ", ".join(dict.fromkeys(r.version for r in records))
        raise DeployError(
            f"version {version} of '{pipeline}' is not unpacked in {target.parent} "
            f"(deployed versions: {known}); deploy its bundle again"
        ) from None
    if (manifest.name, manifest.version) != (pipeline, version):
        raise DeployError(
            f"{target} holds {manifest.name} {manifest.version}, not {pipeline} {version}; "
            "remove that folder and deploy its bundle again"
        )
    tracker = tracking.Tracker(root, uri)
    experiment = tracker.experiment_id(EXPERIMENT)
    started = {tags.DEPLOYMENT_ACTION: DeployAction.ROLLBACK, tags.DEPLOYMENT_BUNDLE: ""}
    with (
        signals_deferred(),
        _recorded(tracker, experiment, f"{pipeline} {version}", started) as run_id,
    ):
        _describe(tracker, run_id, manifest, target)
        _make_live(tracker, experiment, manifest, target)
    return _deployment(manifest, target, DeployAction.ROLLBACK, run_id)


def _rollback_version(pipeline: str, records: list[Deployment], version: str | None) -> str:
    """The version a rollback makes live: ``version``, or the one live before the live one."""
    live = next((r.version for r in records if r.live), records[0].version)
    if version is None:
        order = list(dict.fromkeys(r.version for r in records))  # newest first, distinct
        earlier = [v for v in order if v != live]
        if not earlier:
            raise DeployError(
                f"'{pipeline}' has only one deployed version ({live}); nothing to roll back to"
            )
        # the version live before the live one: the newest deployment event of another version
        return earlier[0]
    if version == live:
        raise DeployError(f"version {version} of '{pipeline}' is live already")
    return version
