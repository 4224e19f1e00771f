"""The Prometheus metrics of one prediction service, served at ``GET /metrics``.

Each service keeps its metrics in a registry of its own (not the process's
global one), so two services in one process, or a test that builds several,
never share a counter. The label children of the two metrics every request
touches are cached: a request counts itself with two dict look-ups. Requests
refused are counted in ``mlnb_serve_errors`` by kind, among them
``unauthenticated`` (401), ``forbidden`` (403) and ``log`` (503: the
prediction log cannot be written).

A challenger (:mod:`mlnb.serving.challenger`) has its version gauge
(``mlnb_serve_challenger_version``, by mode and target), a shadow its counts
of requests scored, failed (an error record), dropped (the queue was full)
and unlogged, and its seconds; a canary the requests it answered.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Prometheus metrics of one service, in a registry of its own.

    Args:
        model: the registered model name (a label of the version gauge).
        alias: the alias followed (a label of the version gauge).
    """

    def __init__(self, model: str, alias: str) -> None:
        self.registry = CollectorRegistry()
        self.model, self.alias = model, alias
        r = self.registry
        self.requests = Counter(
            "mlnb_serve_requests",
            "Requests answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "mlnb_serve_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "mlnb_serve_errors",
            "Requests answered with an error, by endpoint and kind.",
            ["endpoint", "kind"],
            registry=r,
        )
        self.rows = Counter("mlnb_serve_predicted_rows", "Input rows predicted.", registry=r)
        self.version = Gauge(
            "mlnb_serve_model_version",
            "1 for the model version serving.",
            ["model", "alias", "version"],
            registry=r,
        )
        self.swaps = Counter("mlnb_serve_model_swaps", "New versions swapped in.", registry=r)
        self.load_failures = Counter(
            "mlnb_serve_model_load_failures", "Attempts to load a version that failed.", registry=r
        )
        self.load_failing = Gauge(
            "mlnb_serve_model_load_failing",
            "1 while the alias names a version that failed to load.",
            registry=r,
        )
        self.alias_failures = Counter(
            "mlnb_serve_alias_lookup_failures",
            "Registry look-ups of the alias that failed.",
            registry=r,
        )
        self.log_failures = Counter(
            "mlnb_serve_prediction_log_failures",
            "Records the prediction log could not take (their requests answered 503).",
            registry=r,
        )
        self.log_failing = Gauge(
            "mlnb_serve_prediction_log_failing",
            "1 while the prediction log cannot be written (predictions are answered 503).",
            registry=r,
        )
        self.challenger_version = Gauge(
            "mlnb_serve_challenger_version",
            "1 for the version a shadow or canary challenger scores.",
            ["model", "mode", "target", "version"],
            registry=r,
        )
        self.shadow_scored = Counter(
            "mlnb_serve_shadow_scored", "Requests the shadow scored.", registry=r
        )
        self.shadow_failed = Counter(
            "mlnb_serve_shadow_failed",
            "Requests the shadow failed on (raised, refused, over the timeout).",
            registry=r,
        )
        self.shadow_dropped = Counter(
            "mlnb_serve_shadow_dropped",
            "Requests not given to the shadow because its queue was full.",
            registry=r,
        )
        self.shadow_unlogged = Counter(
            "mlnb_serve_shadow_unlogged",
            "Shadow records the prediction log could not take.",
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "mlnb_serve_shadow_duration_seconds",
            "Time the shadow took to score a request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.canary_answers = Counter(
            "mlnb_serve_canary_answers", "Requests the canary answered.", registry=r
        )
        self._answered: dict[tuple[str, int], Counter] = {}
        self._timers: dict[str, Histogram] = {}

    def answered(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        child = self._answered.get((endpoint, code))
        if child is None:
            child = self._answered[(endpoint, code)] = self.requests.labels(endpoint, str(code))
        child.inc()
        timer = self._timers.get(endpoint)
        if timer is None:
            timer = self._timers[endpoint] = self.latency.labels(endpoint)
        timer.observe(seconds)

    def serving(self, old: str | None, new: str) -> None:
        """Move the version gauge from ``old`` to ``new``."""
        if old is not None:
            with contextlib.suppress(KeyError):
                self.version.remove(self.model, self.alias, old)
        self.version.labels(self.model, self.alias, new).set(1)

    def challenger(self, mode: str, target: str, old: str | None, new: str | None) -> None:
        """Move the challenger's version gauge from ``old`` to ``new`` (``None``: no version)."""
        if old is not None:
            with contextlib.suppress(KeyError):
                self.challenger_version.remove(self.model, mode, target, old)
        if new is not None:
            self.challenger_version.labels(self.model, mode, target, new).set(1)
