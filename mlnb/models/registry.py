"""Model CD: register what a pipeline delivers, gate it, and move aliases.

Promotion is an alias: every new version becomes ``challenger``; the version
served is ``champion``. :meth:`Registry.gate` looks up the candidate and the
champion, has :mod:`mlnb.models.gate` score both on the same holdout data with
MLflow's own evaluation and decide, records the decision on the version, and
moves ``champion`` when the challenger won, on its own holdout and on the
evidence beside it (the champion's holdout, the golden data:
:mod:`mlnb.models.evidence`); with a hold (manual promotion) it records the
decision and leaves ``champion`` where it is. A person can move ``champion`` in
the MLflow UI, or with ``mlnb promote``; a prediction service follows the alias
either way.

Each version carries what the gate needs to run again later (``mlnb promote``
outside a pipeline run): its holdout file and gate settings, as tags, beside
its lineage (pipeline run, git commit, spec fingerprint, data fingerprints,
trigger). The registered model keeps the history of ``champion`` in a tag, so
``--rollback`` returns to the version before.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlnb import tags
from mlnb._files import hash_path
from mlnb.errors import suggest
from mlnb.models import RegistryError
from mlnb.models._fluent import process_store
from mlnb.models.data import local_data
from mlnb.models.evidence import Evidence
from mlnb.models.gate import (
    GATE_EXPERIMENT,
    Decision,
    Gate,
    GateConfig,
    already_champion,
    gate_tags,
    read_holdout,
)
from mlnb.store import state_dir, use_credentials
from mlnb.tags import ModelDecision

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GATE_EXPERIMENT",
    "Decision",
    "GateConfig",
    "Registration",
    "Registry",
    "RegistryError",
    "gate_tags",
    "process_store",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: how many earlier champions a registered model remembers for --rollback
HISTORY_LIMIT = 50
#: seconds a gate waits for another machine's gate of the same model
GATE_LOCK_TIMEOUT = 600
#: times a gate decides again when the champion moved (by hand) while it scored
GATE_ATTEMPTS = 3


@dataclass(frozen=True)
class Registration:
    """A model version that a pipeline run delivered.

    Attributes:
        name: the registered model.
        version: its version number.
        created: ``False`` when the version existed already (the notebook
            registered it, or the stage came from the cache).
    """

    name: str
    version: str
    created: bool


class Registry:
    """Registered models on one MLflow store."""

    def __init__(self, uri: str, state: Path | None = None) -> None:
        self.uri = use_credentials(uri)  # MLflow prints the URI it is given: none with a secret
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        #: the state folder: downloaded data, the gate's lock (shared by a team)
        self.state = state or state_dir(Path.cwd())

    # -- registration ------------------------------------------------------------

    def register(
        self,
        name: str,
        run_id: str,
        experiment_id: str,
        artifact: str = "model",
        tags: Mapping[str, str] | None = None,
        *,
        alias: bool = True,
    ) -> Registration:
        """Register the model that run ``run_id`` logged as ``artifact``; alias it challenger.

        A version of ``name`` already created from that run (by the notebook,
        or by an earlier pipeline run whose stage is now cached) is reused,
        its tags as they were. With ``alias`` false no alias moves.

        Raises:
            RegistryError: the run logged no model called ``artifact``.
        """
        try:
            existing = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if existing:
                version = str(max(int(v.version) for v in existing))
                if alias:
                    self.client.set_registered_model_alias(name, CHALLENGER, version)
                return Registration(name, version, created=False)
            models = [
                m
                for m in self.client.search_logged_models(
                    experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
                )
                if m.name == artifact
            ]
            if not models:
                raise RegistryError(
                    f"the stage run {run_id} logged no model named '{artifact}'; log it in the "
                    f"notebook with mlflow.<flavor>.log_model(model, name='{artifact}'), or set "
                    "model.artifact in the spec to the name it uses"
                )
            model = max(models, key=lambda m: m.creation_timestamp)
            self._ensure_registered_model(name)
            with process_store(self.uri):
                created = self.client.create_model_version(
                    name,
                    model.model_uri,
                    run_id=run_id,
                    tags=dict(tags or {}),
                    model_id=model.model_id,
                )
            version = str(created.version)
            if alias:
                self.client.set_registered_model_alias(name, CHALLENGER, version)
            return Registration(name, version, created=True)
        except MlflowException as exc:
            raise RegistryError(
                f"cannot register '{name}' from run {run_id}: {exc.message}"
            ) from exc

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException:  # created meanwhile
                self.client.get_registered_model(name)

    def tag_version(self, name: str, version: str, tags: Mapping[str, object]) -> None:
        """Set tags on a model version (each value as its text)."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value))

    # -- aliases -----------------------------------------------------------------

    def require(self, name: str) -> None:
        """Raise a :class:`RegistryError` naming the models there are if ``name`` is not one."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            names = [m.name for m in self.client.search_registered_models(max_results=100)]
            hint = suggest(name, names) or (
                f"; registered: {', '.join(names)}" if names else "; none is registered yet"
            )
            raise RegistryError(f"no registered model '{name}' in {self.uri}{hint}") from None

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or ``None``."""
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def version(self, name: str, version: str) -> ModelVersion:
        """A model version, or a :class:`RegistryError` that lists the versions there are."""
        try:
            return self.client.get_model_version(name, version)
        except MlflowException:
            versions = self._versions(name)
            if not versions:
                raise RegistryError(f"no registered model '{name}' in {self.uri}") from None
            raise RegistryError(
                f"'{name}' has no version {version}; versions: {', '.join(versions)}"
            ) from None

    def _versions(self, name: str) -> list[str]:
        try:
            found = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        return sorted((str(v.version) for v in found), key=int)

    def set_champion(self, name: str, version: str, reason: str) -> Decision:
        """Point ``champion`` at ``version`` (by hand), keeping the history for rollback."""
        self.version(name, version)
        before = self.alias(name, CHAMPION)
        self._move_champion(name, version, before)
        self.tag_version(
            name, version, {tags.GATE_DECISION: ModelDecision.PROMOTED, tags.GATE_REASON: reason}
        )
        return Decision(name, version, True, before, None, None, None, reason)

    def promote_on_evidence(
        self,
        name: str,
        version: str,
        champion: str,
        reason: str,
        version_tags: Mapping[str, object],
        alias: str = CHALLENGER,
    ) -> Decision | None:
        """Make ``version`` champion on evidence about ``champion`` (online evaluation).

        Under the gate's lock, and only while ``champion`` is still the
        champion and ``alias`` still names ``version``: evidence about other
        versions proves nothing. The move keeps the history for rollback, as
        :meth:`set_champion` does, and ``version_tags`` go on the version.
        ``None`` when either alias moved.
        """
        with self._gate_lock(name):
            if self.alias(name, CHAMPION) != champion or self.alias(name, alias) != version:
                return None
            decision = self.set_champion(name, version, reason)
            self.tag_version(name, version, version_tags)
        return decision

    def remove_alias(
        self, name: str, alias: str, version: str, version_tags: Mapping[str, object]
    ) -> bool:
        """Remove ``alias`` from ``version`` (a service following it stops using it).

        Only while the alias still points at ``version``; ``version_tags`` go
        on the version either way. Whether the alias was removed.
        """
        with self._gate_lock(name):
            removed = self.alias(name, alias) == version
            if removed:
                self.client.delete_registered_model_alias(name, alias)
            self.tag_version(name, version, version_tags)
        return removed

    def promote(
        self, name: str, version: str | None = None, *, force: bool = False, rollback: bool = False
    ) -> Decision:
        """What ``mlnb promote`` does: gate a version, force it, or roll ``champion`` back.

        Args:
            name: the registered model.
            version: the version to promote; default the challenger.
            force: make it champion without the gate.
            rollback: return champion to the version before (no ``version``).

        Raises:
            RegistryError: the model is not registered, it has no challenger and
                no version is named, or the gate cannot run.
        """
        self.require(name)
        if rollback:
            return self.rollback(name)
        target = version or self.alias(name, CHALLENGER)
        if target is None:
            raise RegistryError(f"'{name}' has no challenger; name a version with --version")
        if force:
            return self.set_champion(name, target, f"v{target} promoted by hand")
        return self.gate(name, target)

    def rollback(self, name: str) -> Decision:
        """Return ``champion`` to the version it pointed at before.

        Raises:
            RegistryError: there is no earlier champion.
        """
        history = self._history(name)
        current = self.alias(name, CHAMPION)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise RegistryError(f"'{name}' has no earlier champion to return to")
        target = history.pop()
        self.client.set_registered_model_alias(name, CHAMPION, target)
        self.client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, json.dumps(history))
        reason = f"rolled back from version {current} to version {target}"
        self.tag_version(name, target, {tags.GATE_REASON: reason})
        return Decision(name, target, True, current, None, None, None, reason)

    def _history(self, name: str) -> list[str]:
        try:
            found_tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            raise RegistryError(f"no registered model '{name}' in {self.uri}") from exc
        return list(json.loads(found_tags.get(tags.CHAMPION_HISTORY, "[]")))

    def _move_champion(self, name: str, version: str, before: str | None) -> None:
        history = self._history(name)
        if before and (not history or history[-1] != before):
            history.append(before)
        self.client.set_registered_model_alias(name, CHAMPION, version)
        self.client.set_registered_model_tag(
            name, tags.CHAMPION_HISTORY, json.dumps(history[-HISTORY_LIMIT:])
        )

    # -- the gate ----------------------------------------------------------------

    def gate(
        self,
        name: str,
        version: str,
        config: GateConfig | None = None,
        holdout: Path | None = None,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
        *,
        hold: bool | str = False,
    ) -> Decision:
        """Score ``version`` and the champion on the same holdout data; promote if it wins.

        A version that wins there is also scored on the champion's holdout and
        the golden data of its settings, and must hold up on them too.

        Args:
            name: the registered model.
            version: the candidate version.
            config: gate settings; default: those recorded on the version.
            holdout: a CSV or Parquet file with features and the target column;
                default: the file recorded on the version.
            parent_run_id: a run to nest the gate's run under (the pipeline run).
            experiment_id: where the gate's run goes (default: ``mlnb-gate``).
            hold: promotion is not the gate's: record the decision, never move
                ``champion``; a string says who moves it (see :meth:`Gate.decide`).

        Returns:
            The :class:`Decision`, also recorded as tags on the version and in
            an MLflow run with every score.

        Raises:
            RegistryError: the version is not there, records no (readable) gate
                settings, its holdout data is gone or lacks the target, or the
                gate cannot evaluate.
        """
        found_tags = self.version(name, version).tags
        if config is None:
            config = _recorded_config(name, version, found_tags)
        path = self._holdout_path(name, version, holdout, found_tags)
        data = read_holdout(path, config.target)
        with self._gate_lock(name):  # one gate per model at a time, on every machine
            for _ in range(GATE_ATTEMPTS):
                champion = self.alias(name, CHAMPION)
                if champion == version:
                    return already_champion(name, version, config.metric)
                evidence = [*self._champion_holdout(name, champion, config, path), *_golden(config)]
                decision = Gate(self.client, self.uri).decide(
                    name,
                    version,
                    champion,
                    config,
                    data,
                    parent_run_id=parent_run_id,
                    experiment_id=experiment_id,
                    evidence=evidence,
                    hold=hold,
                    source=path,
                )
                if self.alias(name, CHAMPION) == champion:  # still the one it was compared with
                    break
            self.tag_version(name, version, decision.version_tags())
            if decision.promoted:
                self._move_champion(name, version, champion)
        return decision

    def _gate_lock(self, name: str) -> contextlib.AbstractContextManager[object]:
        """The lock that makes a gate see the champion as it is when the alias moves.

        It lives in the state folder, so every machine sharing it (and the
        store) waits its turn; a gate takes seconds, so waiting is bounded.
        """
        folder = self.state / "models"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a state folder this machine cannot write: no cross-machine lock
            return contextlib.nullcontext()
        return FileLock(str(folder / f"{name}.gate.lock"), timeout=GATE_LOCK_TIMEOUT)

    def data(self, value: str, digest: str | None) -> Path:
        """A local copy of data a version records (a path, or an artifact in the store)."""
        return local_data(value, digest, self.uri, self.state)

    def _holdout_path(
        self, name: str, version: str, holdout: Path | None, found_tags: Mapping[str, str]
    ) -> Path:
        """The holdout file given, else the one the version records; it must still exist."""
        if holdout is None and tags.HOLDOUT in found_tags:
            holdout = self.data(found_tags[tags.HOLDOUT], found_tags.get(tags.HOLDOUT_SHA))
        if holdout is None or not holdout.exists():
            raise RegistryError(
                f"the holdout data of {name} version {version} is gone "
                f"({holdout}); re-run the pipeline, or promote by hand with --force"
            )
        return holdout

    def _champion_holdout(
        self, name: str, champion: str | None, config: GateConfig, own: Path
    ) -> list[Evidence]:
        """The holdout the champion was gated on, unless it is the challenger's own data.

        None for a first champion, or a champion that records no holdout (it
        was registered by hand); evidence that cannot be read when its file is
        gone or broken.
        """
        if champion is None:
            return []
        found = self.version(name, champion).tags
        recorded = found.get(tags.HOLDOUT)
        if not recorded:
            return []
        label = f"champion v{champion}'s holdout"
        kind = tags.Evidence.CHAMPION_HOLDOUT
        try:
            path = self.data(recorded, found.get(tags.HOLDOUT_SHA))
        except RegistryError as exc:
            return [Evidence(kind, label, Path(recorded), None, exc.message)]
        if not path.is_file():
            return [Evidence(kind, label, path, None, f"{path} is gone")]
        if _same_file(path, own):
            return []
        try:
            return [Evidence(kind, label, path, read_holdout(path, config.target))]
        except RegistryError as exc:
            return [Evidence(kind, label, path, None, exc.message)]


def _recorded_config(name: str, version: str, found_tags: Mapping[str, str]) -> GateConfig:
    """The gate settings a version records, as the pipeline that registered it set them."""
    text = found_tags.get(tags.GATE_CONFIG)
    if text is None:
        raise RegistryError(
            f"{name} version {version} records no gate settings (it was "
            "not registered by an mlnb pipeline with a model section); "
            "promote it by hand with --force"
        )
    try:
        return GateConfig.from_json(text)
    except ValueError as exc:
        raise RegistryError(
            f"{name} version {version} records gate settings mlnb cannot read ({exc}); "
            "promote it by hand with --force"
        ) from None


def _golden(config: GateConfig) -> list[Evidence]:
    """The golden data the settings name, with its floors."""
    if config.golden is None:
        return []
    path = Path(config.golden)
    kind, label = tags.Evidence.GOLDEN, f"the golden data {path.name}"
    try:
        data = read_holdout(path, config.target)
    except RegistryError as exc:
        return [Evidence(kind, label, path, None, exc.message, config.floor)]
    return [Evidence(kind, label, path, data, floor=config.floor)]


def _same_file(one: Path, other: Path) -> bool:
    """Whether two holdout files hold the same bytes (a cached stage's, say)."""
    try:
        return one.resolve() == other.resolve() or hash_path(one) == hash_path(other)
    except OSError:
        return False
