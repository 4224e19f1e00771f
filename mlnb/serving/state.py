"""The state of one prediction service: the version served, the alias follower, health.

Design decisions:

- **Follow the alias, swap one reference.** A thread polls the registry
  every ``poll_seconds``; when the alias names another version it loads that
  version beside the serving one and swaps :attr:`Service.current`, so a
  request that read the reference once is answered start to end by one
  version, and no request waits for a load.
- **Troubles are reported.** A version that fails to load leaves the old one
  serving and is retried after :data:`RETRY_SECONDS`; an alias that cannot be
  looked up, or a prediction log that cannot be written, is a
  :class:`Trouble` too. Each shows in ``/health`` (``degraded``), ``/version``,
  the metrics (:mod:`mlnb.serving.metrics`) and the server log, once when it
  starts and once when it ends. A log write that fails is also raised, so
  the request it belongs to is not answered; the next write that succeeds
  ends the trouble.
- **A challenger is followed by the same thread.** A shadow or canary
  (:mod:`mlnb.serving.challenger`) follows its alias on each poll, after the
  champion; its troubles are listed under ``shadow`` or ``canary`` in
  ``/mlnb/health`` and ``/mlnb/version`` and leave the status ``ok``: the
  champion answers every request as it should.
- **No secret in a report.** The store's URI is shown redacted
  (:func:`mlnb.store.redacted`), and so is any message that quotes it.
- **Labels have the model's output type.** A version's output type comes
  from its signature's outputs, else from the first predictions it served;
  :func:`label_problem` says why a label does not fit it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import numpy as np
from mlflow.tracking import MlflowClient

from mlnb import __version__
from mlnb.predictions.log import LogWriteError, PredictionLog
from mlnb.serving.metrics import Metrics
from mlnb.serving.parsing import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from mlnb.predictions.retention import Retention
    from mlnb.serving.challenger import Follower, Shadow
from mlnb.serving.scoring import Served, error_text, load_version
from mlnb.store import redacted

logger = logging.getLogger(__name__)

RETRY_SECONDS = 30.0  # a version that failed to load is tried again after this long
MAINTAIN_SECONDS = 600.0  # how often a service with a retention compresses and prunes its log

#: what ``/health`` says: ``degraded`` while the service has a trouble
HealthStatus = Literal["ok", "degraded"]
#: what a label must be for a model's predictions to be compared with it
LabelKind = Literal["number", "boolean", "string"]
_KIND_OF_TYPE: dict[str, LabelKind] = {
    "double": "number",
    "float": "number",
    "long": "number",
    "integer": "number",
    "boolean": "boolean",
    "string": "string",
}
_KIND_OF_DTYPE: dict[str, LabelKind] = {"i": "number", "u": "number", "f": "number", "b": "boolean"}
_LABEL_NAMES: dict[LabelKind, str] = {
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
}


def _kind_of_value(value: Any) -> LabelKind | None:
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | float | np.integer | np.floating):
        return "number"
    return "string" if isinstance(value, str) else None


def outputs_kind(outputs: Any) -> LabelKind | None:
    """The label kind of a batch of predictions; ``None`` for records, arrays or a mix."""
    if isinstance(outputs, np.ndarray):
        if outputs.ndim != 1:
            return None
        if outputs.dtype.kind in _KIND_OF_DTYPE:
            return _KIND_OF_DTYPE[outputs.dtype.kind]
        outputs = outputs.tolist()
    if not isinstance(outputs, list) or not outputs:
        return None
    kinds = {_kind_of_value(value) for value in outputs[:100]}
    return kinds.pop() if len(kinds) == 1 else None


def signature_kind(source: str) -> LabelKind | None:
    """The label kind a version's signature declares for its one output; ``None`` if none."""
    from mlflow.models import Model

    try:
        signature = Model.load(source).signature
    except Exception:  # no readable MLmodel: the served predictions decide
        return None
    outputs = signature.outputs if signature is not None else None
    if outputs is None or len(outputs.inputs) != 1:
        return None
    spec = outputs.inputs[0]
    if outputs.is_tensor_spec():
        dtype = spec.type
        shape = getattr(spec, "shape", None) or (-1,)
        return _KIND_OF_DTYPE.get(dtype.kind) if len(shape) == 1 else None
    return _KIND_OF_TYPE.get(getattr(spec.type, "name", ""))


def redact_in(text: str, uri: str) -> str:
    """``text`` with ``uri``, and the user info (name, password, token) in it, redacted."""
    text = text.replace(uri, redacted(uri))
    userinfo = urlsplit(uri).netloc.rpartition("@")[0]
    return text.replace(userinfo, "***") if userinfo else text


def label_problem(kind: LabelKind, label: Any) -> str | None:
    """Why ``label`` cannot be a label of a model whose predictions are ``kind``; ``None`` if fit.

    ``null`` always fits: that row has no label.
    """
    if label is None or _kind_of_value(label) == kind:
        return None
    shown = repr(label)[:60] if not isinstance(label, list | dict) else type(label).__name__
    return f"got {shown}; the model predicts {_LABEL_NAMES[kind]}, so each label must be one"


@dataclass(frozen=True)
class Trouble:
    """A problem the service reports while it goes on serving."""

    message: str
    since: datetime
    version: str | None = None
    retry_at: float = 0.0  # time.monotonic() of the next attempt

    def as_json(self) -> dict[str, Any]:
        """The trouble as ``/health`` and ``/version`` show it."""
        out: dict[str, Any] = {"message": self.message, "since": self.since.isoformat()}
        if self.version is not None:
            out["version"] = self.version
        return out


class Service:
    """The state of one prediction service: the serving version, its log and metrics.

    Args:
        client: the MLflow client of the store.
        tracking_uri: that store's URI.
        model: the registered model name.
        alias: the alias followed; ``None`` for a pinned version (``models:/NAME/VERSION``).
        first: the version loaded at start.
        log: the prediction log.
        poll_seconds: how often the alias is looked up.
        max_body_bytes: the largest request body taken.
        limits: what one request may hold besides its size (columns, rows, nesting).
        timeout: how long a request may be scored (then 504), in seconds.
        retention: what the prediction log keeps; ``None``: everything. The
            service compresses closed days and prunes at start and every
            :data:`MAINTAIN_SECONDS` (one process at a time, whatever number
            of servers share the log).
        challenger: the shadow or canary challenger followed beside the
            champion; ``None``: none.
        shadow: the shadow's queue and worker (with a shadow challenger).
        metrics: the service's metrics (the challenger's counts among them);
            new ones when not given.
    """

    def __init__(
        self,
        client: MlflowClient,
        tracking_uri: str,
        model: str,
        alias: str | None,
        first: Served,
        log: PredictionLog,
        poll_seconds: float,
        max_body_bytes: int,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float = 60.0,
        retention: Retention | None = None,
        challenger: Follower | None = None,
        shadow: Shadow | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client, self.uri, self.model, self.alias = client, tracking_uri, model, alias
        self.current = first
        self.alias_version = first.version
        self.log = log
        self.poll_seconds = poll_seconds
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.timeout = timeout
        self.retention = retention
        self._keeper: threading.Thread | None = None
        self.metrics = metrics if metrics is not None else Metrics(model, alias or "")
        self.metrics.serving(None, first.version)
        self.load_trouble: Trouble | None = None
        self.alias_trouble: Trouble | None = None
        self.log_trouble: Trouble | None = None
        self._kinds: dict[str, LabelKind | None] = {first.version: signature_kind(first.source)}
        self._observed: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.challenger = challenger
        self.shadow = shadow
        #: the challenger when it is a canary (the one look-up a request makes)
        canary = challenger is not None and challenger.challenger.mode == "canary"
        self.canary = challenger if canary else None

    def safe(self, text: str) -> str:
        """``text`` with the store's URI, and its user info, redacted."""
        return redact_in(text, self.uri)

    # the follower thread

    def start(self) -> None:
        """Start following the aliases (a pinned version is not followed), keeping the log."""
        self._stop.clear()
        if self.retention is not None:
            self._keeper = threading.Thread(target=self._keep, name="mlnb-serve-log", daemon=True)
            self._keeper.start()
        if self.shadow is not None:
            self.shadow.start()
        if self.alias is None and self.challenger is None:
            return
        self._thread = threading.Thread(target=self._follow, name="mlnb-serve-alias", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following the alias (a load in progress gets ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.shadow is not None:
            self.shadow.stop(timeout)
        self._keeper = None  # a daemon: a compression under way does not hold the process

    def _keep(self) -> None:
        """Compress and prune the prediction log now and every :data:`MAINTAIN_SECONDS`."""
        from mlnb.predictions.retention import maintain

        retention = self.retention
        assert retention is not None
        while True:
            try:
                done = maintain(self.log.directory, retention, datetime.now(UTC))
            except Exception:  # never let upkeep stop the service; the next round tries again
                logger.exception("cannot keep the prediction log at %s", self.log.directory)
            else:
                if done.pruned is not None and done.pruned.deleted:
                    logger.info(
                        "prediction log: %d day files past retention %s deleted (%d bytes)",
                        len(done.pruned.deleted),
                        retention.text,
                        done.freed,
                    )
            if self._stop.wait(MAINTAIN_SECONDS):
                return

    def _follow(self) -> None:
        challenger = self.challenger
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # never let the follower die: the service must keep serving
                logger.exception("following alias '%s' of '%s' failed", self.alias, self.model)
            if challenger is None:
                continue
            try:  # a pinned challenger loaded returns at once; one that failed is retried
                challenger.poll()
            except Exception:
                logger.exception(
                    "following the %s of '%s' failed", challenger.challenger, self.model
                )

    def poll(self) -> None:
        """Look the alias up once; load and swap in the version it names if that is new."""
        target = self._look_up()
        if target is None:
            return
        self.alias_version = target
        if target == self.current.version:
            if self.load_trouble is not None:  # the alias went back to the serving version
                self.load_trouble = None
                self.metrics.load_failing.set(0)
            return
        failed = self.load_trouble
        if failed is not None and failed.version == target and time.monotonic() < failed.retry_at:
            return
        loaded = self._load(target)
        if loaded is not None:
            self._swap(loaded)

    def _look_up(self) -> str | None:
        """The version the alias names now; ``None`` (and an alias trouble) if the look-up fails."""
        if self.alias is None:
            return None
        try:
            target = str(self.client.get_model_version_by_alias(self.model, self.alias).version)
        except Exception as exc:
            self.metrics.alias_failures.inc()
            if self.alias_trouble is None:
                logger.warning(
                    "cannot look up alias '%s' of '%s' (still serving version %s): %s",
                    self.alias,
                    self.model,
                    self.current.version,
                    self.safe(error_text(exc)),
                )
            self.alias_trouble = Trouble(
                self.safe(f"cannot look up the alias: {error_text(exc)}"), datetime.now(UTC)
            )
            return None
        if self.alias_trouble is not None:
            logger.info("alias '%s' of '%s' can be looked up again", self.alias, self.model)
            self.alias_trouble = None
        return target

    def _load(self, target: str) -> Served | None:
        """Version ``target`` loaded; ``None`` (and a load trouble, retried later) if it fails."""
        logger.info(
            "alias '%s' of '%s' names version %s; loading it", self.alias, self.model, target
        )
        try:
            loaded = load_version(self.client, self.model, target, self.uri)
        except Exception as exc:
            failed = self.load_trouble
            self.metrics.load_failures.inc()
            self.metrics.load_failing.set(1)
            self.load_trouble = Trouble(
                self.safe(f"version {target} failed to load: {error_text(exc)}"),
                datetime.now(UTC) if failed is None or failed.version != target else failed.since,
                target,
                time.monotonic() + RETRY_SECONDS,
            )
            logger.error(
                "version %s of '%s' failed to load; still serving version %s "
                "(next try in %.0f s): %s",
                target,
                self.model,
                self.current.version,
                RETRY_SECONDS,
                self.safe(error_text(exc)),
            )
            return None
        self._kinds[loaded.version] = signature_kind(loaded.source)
        return loaded

    def _swap(self, loaded: Served) -> None:
        """Serve ``loaded`` from the next request on: one reference changes."""
        old, self.current = self.current, loaded
        self.load_trouble = None
        self.metrics.load_failing.set(0)
        self.metrics.swaps.inc()
        self.metrics.serving(old.version, loaded.version)
        logger.info(
            "now serving version %s of '%s' (alias '%s'), was version %s",
            loaded.version,
            self.model,
            self.alias,
            old.version,
        )

    # reports

    def troubles(self) -> dict[str, Any]:
        """Each problem the service has now, by name."""
        found = {
            "load_error": self.load_trouble,
            "alias_error": self.alias_trouble,
            "log_error": self.log_trouble,
        }
        return {name: t.as_json() for name, t in found.items() if t is not None}

    def challenger_report(self) -> dict[str, Any]:
        """The challenger, under its mode (``shadow`` or ``canary``); nothing without one."""
        challenger = self.challenger
        if challenger is None:
            return {}
        return {challenger.challenger.mode: challenger.report()}

    def health(self) -> dict[str, Any]:
        """What ``/mlnb/health`` answers: ``ok``, or ``degraded`` with the problems.

        A challenger's troubles are listed under it and do not degrade the service.
        """
        served, problems = self.current, self.troubles()
        status: HealthStatus = "degraded" if problems else "ok"
        return {
            "status": status,
            "model": self.model,
            "alias": self.alias,
            "model_version": served.version,
            "alias_version": self.alias_version,
            "serving_since": served.loaded_at.isoformat(),
            **problems,
            **self.challenger_report(),
        }

    def version_info(self) -> dict[str, Any]:
        """What ``/version`` answers: the versions of MLflow, mlnb and the model."""
        import mlflow

        served = self.current
        return {
            "mlflow_version": mlflow.__version__,
            "mlnb_version": __version__,
            "model": self.model,
            "alias": self.alias,
            "model_version": served.version,
            "alias_version": self.alias_version,
            "run_id": served.run_id,
            "source": self.safe(redacted(served.source)),
            "flavor": served.flavor,
            "tracking_uri": redacted(self.uri),
            **self.troubles(),
            **self.challenger_report(),
        }

    def logged(self, write: Callable[[], None]) -> None:
        """Run one log write; a failure is counted, reported and raised.

        Raises:
            LogWriteError: the record was not written (the request is not to
                be answered as if it were).
        """
        try:
            write()
        except LogWriteError as exc:
            self.metrics.log_failures.inc()
            self.metrics.log_failing.set(1)
            failed = self.log_trouble
            if failed is None:
                logger.error("cannot write the prediction log: %s", exc)
            self.log_trouble = Trouble(
                str(exc),
                failed.since if failed is not None else datetime.now(UTC),
            )
            raise
        if self.log_trouble is not None:
            logger.info("the prediction log can be written again")
            self.log_trouble = None
            self.metrics.log_failing.set(0)

    # labels

    def observe(self, version: str, outputs: Any) -> None:
        """Learn a version's output type from its first predictions, if its signature had none."""
        if self._kinds.get(version, "unknown") is None and version not in self._observed:
            self._observed.add(version)
            self._kinds[version] = outputs_kind(outputs)

    def label_kind(self) -> LabelKind | None:
        """What a label must be for the version serving; ``None`` when that is not known."""
        return self._kinds.get(self.current.version)
