"""Online evaluation: a challenger version scored beside the champion, as a shadow or a canary.

``mlnb serve MODEL --shadow challenger`` answers every request with the
champion and scores it with the challenger too, off the request's path;
``--canary challenger:10%`` answers a stable tenth of the requests with the
challenger. :class:`Challenger` is what was asked, :class:`Follower` the
version it names now, :class:`Shadow` the shadow's queue and worker, and
:func:`in_canary` the split.

Design decisions:

- **The challenger follows its alias, and may have none.** The service's
  follower thread (:mod:`mlnb.serving.state`) polls the challenger's alias
  beside the champion's, and a new version is loaded beside the serving one
  and swapped in with one reference, as for the champion. An alias that is
  not set (no challenger registered yet, or one removed) is no trouble: the
  shadow scores nothing, the canary's share goes to the champion, until it
  names a version. A version that fails to load, or an alias that cannot be
  looked up, is a trouble of the challenger's, retried after
  :data:`~mlnb.serving.state.RETRY_SECONDS`: it is listed under ``shadow`` or
  ``canary`` in ``/mlnb/health`` and ``/mlnb/version``, but the service stays
  ``ok``, since the champion answers every request as it should.
- **A shadow never touches an answer.** The request is answered and logged
  by the champion first; then its body goes into a bounded queue
  (:data:`QUEUE_JOBS` requests, :data:`QUEUE_BYTES` of bodies) with
  ``put_nowait``: when the queue is full the job is dropped and counted
  (``mlnb_serve_shadow_dropped``), never waited for. One daemon thread
  scores the queue with the shadow version, parsing each body again as the
  champion did, and gathers what comes within :data:`BATCH_SECONDS` of a
  request (up to :data:`BATCH_JOBS`): the fast path's bodies are stacked and
  predicted in one model call (:func:`~mlnb.serving.scoring.score_many`), so under load
  the shadow costs a fraction of the champion's work per request. Whatever
  the shadow does (raises, is refused, takes longer than the service's
  timeout) becomes an error record, never an exception in a request. A
  thread, not a process: no body is copied to another process, and a
  sleeping or waiting model holds nothing. ``benchmarks/bench_shadow.py``
  measures the champion with and without a shadow as costly as itself.
- **A shadow's predictions have their own day files**
  (``shadow-YYYY-MM-DD.jsonl``, :meth:`~mlnb.predictions.log.PredictionLog.write_shadow`)
  under the request id the champion answered, so the two join on
  ``request_id`` and ``row`` with the labels that come for the champion's
  answer (:func:`~mlnb.predictions.log.load_shadow`).
- **A canary is chosen by a stable hash.** The key is the client's
  ``X-Request-Key`` header (a user or session id), else the request id: its
  BLAKE2b hash as a fraction of 2**64 below the share sends it to the
  canary, so one key always sees one version (while the canary version
  serves), and the share holds over many keys. A canary's answer names its
  version as any answer does and is logged with ``"arm": "canary"``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlnb.predictions.log import LogWriteError, PredictionLog
from mlnb.serving.metrics import Metrics
from mlnb.serving.parsing import DEFAULT_LIMITS, Limits, Reject
from mlnb.serving.scoring import Served, error_text, load_version, score_many

if TYPE_CHECKING:
    from mlnb.serving.state import Trouble

logger = logging.getLogger(__name__)

#: how a challenger meets requests
Mode = Literal["shadow", "canary"]
SHADOW: Mode = "shadow"
CANARY: Mode = "canary"
QUEUE_JOBS = 1000  # shadow requests waiting at most; beyond, new ones are dropped
QUEUE_BYTES = 64 * 2**20  # request bodies waiting at most, together
BATCH_JOBS = 256  # queued requests the shadow scores together, in one model call where it can
BATCH_SECONDS = 0.05  # how long the shadow gathers requests before it scores them
KEY_HEADER = b"x-request-key"
_CANARY = re.compile(r"^(?P<target>[^:]*):(?P<share>[^:]*)$")
_SHARE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*%?\s*$")


@dataclass(frozen=True)
class Challenger:
    """What the service scores beside the champion, as ``--shadow`` or ``--canary`` said it.

    Attributes:
        mode: shadow (scored on every request, answering none) or canary
            (answering its share).
        alias: the alias followed, or ``None`` for a pinned version.
        version: the pinned version, or ``None``.
        percent: a canary's share of the requests (0 to 100); 0 for a shadow.
    """

    mode: Mode
    alias: str | None
    version: str | None = None
    percent: float = 0.0

    @classmethod
    def parse(cls, mode: Mode, text: str) -> Challenger:
        """``ALIAS`` or ``VERSION`` for a shadow; ``ALIAS:PERCENT%`` (or ``VERSION:``) for a canary.

        Raises:
            ValueError: the text is not of that form, with the form that works.
        """
        if mode == SHADOW:
            return cls._of_target(mode, text.strip(), "--shadow challenger (or --shadow 3)")
        found = _CANARY.match(text.strip())
        if found is None:
            raise ValueError(
                f"'{text}' names no share of the requests; give the target and its share, "
                "as challenger:10% (or 3:10% for version 3)"
            )
        target = cls._of_target(mode, found["target"].strip(), "challenger:10% (or 3:10%)")
        share = _SHARE.match(found["share"])
        percent = float(share["number"]) if share is not None else -1.0
        if not 0 < percent <= 100:
            raise ValueError(
                f"'{found['share']}' is not a share of the requests; give a percentage above 0 "
                "and at most 100, as challenger:10%"
            )
        return cls(mode, target.alias, target.version, percent)

    @classmethod
    def _of_target(cls, mode: Mode, target: str, example: str) -> Challenger:
        if not target:
            raise ValueError(f"no alias or version to score beside the champion; as {example}")
        if "/" in target or "@" in target or ":" in target or any(c.isspace() for c in target):
            raise ValueError(
                f"'{target}' is not an alias or a version number of the served model; as {example}"
            )
        if target.isdigit():
            return cls(mode, None, str(int(target)))
        return cls(mode, target)

    @property
    def target(self) -> str:
        """The alias or the version, as given."""
        return self.alias if self.alias is not None else str(self.version)

    def __str__(self) -> str:
        """As ``--shadow`` or ``--canary`` takes it (so :meth:`parse` reads it back)."""
        return self.target if self.mode == SHADOW else f"{self.target}:{self.percent:g}%"


def in_canary(key: bytes, percent: float) -> bool:
    """Whether the request of ``key`` goes to a canary answering ``percent`` % of requests."""
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return value < percent / 100 * 2**64


class Follower:
    """The version a :class:`Challenger` names now: followed, loaded, swapped in.

    Args:
        client: the MLflow client of the store.
        tracking_uri: that store's URI.
        model: the registered model name.
        challenger: what to follow.
        metrics: the service's metrics.
    """

    def __init__(
        self,
        client: MlflowClient,
        tracking_uri: str,
        model: str,
        challenger: Challenger,
        metrics: Metrics,
    ) -> None:
        self.client, self.uri, self.model = client, tracking_uri, model
        self.challenger = challenger
        self.metrics = metrics
        self.current: Served | None = None  # the version scored now; None: none yet, or no longer
        self.alias_version: str | None = challenger.version
        self.trouble: Trouble | None = None

    @property
    def follows(self) -> bool:
        """It follows an alias (a pinned version is loaded once)."""
        return self.challenger.alias is not None

    def safe(self, text: str) -> str:
        from mlnb.serving.state import redact_in

        return redact_in(text, self.uri)

    def poll(self) -> None:
        """Look the alias up once; load and swap in the version it names if that is new."""
        from mlnb.serving.state import RETRY_SECONDS, Trouble

        challenger = self.challenger
        if challenger.alias is None:
            target: str | None = challenger.version
        else:
            try:
                target = self._look_up(challenger.alias)
            except Exception as exc:
                if self.trouble is None or self.trouble.version is not None:
                    logger.warning(
                        "cannot look up %s alias '%s' of '%s': %s",
                        challenger.mode,
                        challenger.alias,
                        self.model,
                        self.safe(error_text(exc)),
                    )
                self.trouble = Trouble(
                    self.safe(f"cannot look up the alias: {error_text(exc)}"), datetime.now(UTC)
                )
                return
        self.alias_version = target
        served = self.current
        if target is None:
            if served is not None or self.trouble is not None:
                logger.info(
                    "alias '%s' of '%s' is not set: no %s until it is",
                    challenger.alias,
                    self.model,
                    challenger.mode,
                )
                self._serve(None)
            return
        if served is not None and served.version == target:
            self.trouble = None
            return
        failed = self.trouble
        if failed is not None and failed.version == target and time.monotonic() < failed.retry_at:
            return
        try:
            loaded = load_version(self.client, self.model, target, self.uri)
        except Exception as exc:
            self.metrics.load_failures.inc()
            self.trouble = Trouble(
                self.safe(f"{challenger.mode} version {target} failed to load: {error_text(exc)}"),
                datetime.now(UTC) if failed is None or failed.version != target else failed.since,
                target,
                time.monotonic() + RETRY_SECONDS,
            )
            logger.error(
                "%s version %s of '%s' failed to load (the champion serves on; next try in "
                "%.0f s): %s",
                challenger.mode,
                target,
                self.model,
                RETRY_SECONDS,
                self.safe(error_text(exc)),
            )
            return
        self._serve(loaded)

    def _look_up(self, alias: str) -> str | None:
        """The version ``alias`` names; ``None`` when it names none."""
        try:
            return str(self.client.get_model_version_by_alias(self.model, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def _serve(self, loaded: Served | None) -> None:
        old, self.current = self.current, loaded
        self.trouble = None
        self.metrics.challenger(
            self.challenger.mode,
            self.challenger.target,
            old.version if old else None,
            loaded.version if loaded else None,
        )
        if loaded is not None:
            logger.info(
                "%s: now version %s of '%s' (%s)",
                self.challenger.mode,
                loaded.version,
                self.model,
                f"alias '{self.challenger.alias}'" if self.follows else "pinned",
            )

    def report(self) -> dict[str, Any]:
        """What ``/mlnb/health`` and ``/mlnb/version`` say of the challenger."""
        challenger, served = self.challenger, self.current
        out: dict[str, Any] = {
            "alias": challenger.alias,
            "model_version": served.version if served is not None else None,
            "alias_version": self.alias_version,
        }
        if challenger.mode == CANARY:
            out["percent"] = challenger.percent
        if self.trouble is not None:
            out["load_error" if self.trouble.version else "alias_error"] = self.trouble.as_json()
        return out


@dataclass(frozen=True)
class _Job:
    """One request for the shadow: what the champion was given, and by whom it is scored."""

    served: Served
    request_id: str
    ms: int
    mime: str
    body: bytes
    rows: int


class _Queue:
    """The jobs of one run of the worker, bounded in count and in bytes; ``None`` ends it."""

    def __init__(self, jobs: int, max_bytes: int) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.room = threading.BoundedSemaphore(jobs)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.lock = threading.Lock()

    def offer(self, job: _Job) -> bool:
        """Queue ``job`` if there is room for it; never waits."""
        if not self.room.acquire(blocking=False):
            return False
        with self.lock:
            if self.bytes + len(job.body) > self.max_bytes:
                self.room.release()
                return False
            self.bytes += len(job.body)
        self.jobs.put(job)
        return True

    def done(self, job: _Job) -> None:
        with self.lock:
            self.bytes -= len(job.body)
        self.room.release()


class Shadow:
    """The shadow's bounded queue and its one worker thread.

    Args:
        follower: the shadow version (none: jobs are not queued).
        log: the prediction log its records go to.
        metrics: the service's metrics.
        limits: what one request may hold (as the champion checked it).
        timeout: a shadow slower than this is recorded as an error (its
            predictions dropped), as the champion would have answered 504.
        jobs: how many requests may wait.
        max_bytes: how many bytes of request bodies may wait.
    """

    def __init__(
        self,
        follower: Follower,
        log: PredictionLog,
        metrics: Metrics,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float = 60.0,
        jobs: int = QUEUE_JOBS,
        max_bytes: int = QUEUE_BYTES,
    ) -> None:
        self.follower, self.log, self.metrics = follower, log, metrics
        self.limits, self.timeout = limits, timeout
        self.jobs, self.max_bytes = jobs, max_bytes
        self._queue: _Queue | None = None  # while the worker runs
        self._thread: threading.Thread | None = None
        self._log_failing = False

    def submit(self, request_id: str, ms: int, mime: str, body: bytes, rows: int) -> None:
        """Queue a request the champion answered, or drop it if the queue is full; never waits."""
        served, jobs = self.follower.current, self._queue
        if served is None or jobs is None:
            return
        if not jobs.offer(_Job(served, request_id, ms, mime, body, rows)):
            self.metrics.shadow_dropped.inc()

    def start(self) -> None:
        """Start the worker on a queue of its own."""
        jobs = self._queue = _Queue(self.jobs, self.max_bytes)
        self._thread = threading.Thread(
            target=self._work, args=(jobs,), name="mlnb-serve-shadow", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop taking jobs; the worker ends after the job in hand (waited for ``timeout``).

        The jobs still queued are not scored.
        """
        jobs, self._queue = self._queue, None
        if jobs is not None:
            jobs.jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)  # a daemon: a shadow stuck in predict does not hold us
            self._thread = None

    def _work(self, jobs: _Queue) -> None:
        while (job := jobs.jobs.get()) is not None and self._queue is jobs:
            batch, end = [job], False
            until = time.monotonic() + BATCH_SECONDS
            while len(batch) < BATCH_JOBS:  # what comes meanwhile is scored with it
                try:
                    more = jobs.jobs.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    end = True
                    break
                batch.append(more)
            try:
                self._score(batch)
            except Exception:  # never let the worker die: the next jobs are scored
                logger.exception("the shadow could not score request %s", job.request_id)
            finally:
                for done in batch:
                    jobs.done(done)
            if end:
                return

    def _score(self, batch: list[_Job]) -> None:
        """Score the jobs (one model call for those of one version where it can) and log them."""
        by_version: dict[int, list[_Job]] = {}
        for job in batch:
            by_version.setdefault(id(job.served), []).append(job)
        for jobs in by_version.values():
            started = time.perf_counter()
            try:
                results = score_many(jobs[0].served, [(j.mime, j.body) for j in jobs], self.limits)
            except Exception as exc:  # the model itself, beyond what a Reject says
                results = [exc] * len(jobs)
            seconds = time.perf_counter() - started
            for job, result in zip(jobs, results, strict=True):
                self._record(job, result, seconds)

    def _record(self, job: _Job, result: Any, seconds: float) -> None:
        """Log one job's record: its predictions, or the error in their place."""
        outputs: Any = None
        error: str | None = None
        if isinstance(result, Reject):
            error = result.message
        elif isinstance(result, Exception):
            error = error_text(result)
        else:
            outputs = result
        if error is None and seconds > self.timeout:
            error = f"took {seconds:.3g} s, longer than the service's timeout of {self.timeout:g} s"
        self.metrics.shadow_seconds.observe(seconds)
        (self.metrics.shadow_failed if error is not None else self.metrics.shadow_scored).inc()
        try:
            self.log.write_shadow(
                job.request_id,
                job.ms,
                job.served.version,
                job.rows,
                seconds,
                outputs=outputs if error is None else None,
                error=error,
            )
        except LogWriteError as exc:
            if not self._log_failing:
                logger.error("cannot write the shadow's predictions: %s", exc)
            self._log_failing = True
            self.metrics.shadow_unlogged.inc()
            return
        if self._log_failing:
            logger.info("the shadow's predictions can be written again")
            self._log_failing = False
