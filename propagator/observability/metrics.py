"""Every Prometheus metric propagator exports, in one place, on an injectable registry.

Each ``Metrics`` owns a fresh ``CollectorRegistry`` unless one is given, so tests
and several daemons in one process never collide on the global registry. Label
values come from small fixed sets (never a key), and every combination is created
up front so each series exists at 0 before its first event: ``rate()`` and
``absent()`` in alert rules then behave from the first scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from propagator.version import __version__

__all__ = [
    "APPLY_SOURCES",
    "DATABASES",
    "HTTP_REFUSALS",
    "LAG_BUCKETS",
    "MALFORMED_REASONS",
    "METRICS_CONTENT_TYPE",
    "RECONCILE_DURATION_BUCKETS",
    "RECONCILE_RESULTS",
    "RETRY_CAUSES",
    "Metrics",
]

NAMESPACE: Final = "propagator"

#: Where a write came from: a notification, the catch-up after (re)connect, the
#: periodic reconcile, or one asked for by a person (CLI or HTTP).
APPLY_SOURCES: Final = ("event", "catchup", "reconcile", "manual")
RECONCILE_RESULTS: Final = ("success", "failure")
DATABASES: Final = ("production", "sandbox")
RETRY_CAUSES: Final = ("production_unavailable", "sandbox_unavailable", "transient", "permanent")
MALFORMED_REASONS: Final = ("invalid_json", "unknown_version", "bad_keys", "oversized", "other")
#: Why the HTTP endpoint refused a request or dropped a connection.
HTTP_REFUSALS: Final = ("bad_request", "host", "unauthorized", "timeout", "busy", "evicted")

#: Propagation lag spans a debounce window (tens of ms) to an outage catch-up (a minute).
LAG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: A reconcile takes well under a second on small tables and minutes on large ones.
RECONCILE_DURATION_BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)

#: The classic text format every Prometheus version parses; our names are all
#: legacy-valid, so the body is the same whichever version label is announced.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _checked(value: str, allowed: Iterable[str], label: str) -> str:
    """Refuse a label value outside its fixed set: unbounded labels would explode series."""
    if value not in allowed:
        raise ValueError(f"{label} label {value!r} is not one of {', '.join(allowed)}")
    return value


class Metrics:
    """The daemon's metrics; attribute names are the contract the rest of the code uses."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            # Process memory, CPU and file descriptors, as every Prometheus exporter offers.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self._last_tick_monotonic: float | None = None
        # Declared in this order, which is the order of the exposition.
        self._declare_event_path()
        self._declare_reconcile()
        self._declare_health()
        self.build_info.info({"version": __version__})
        self._create_series()

    # Declarations: name, help text and labels of every metric, grouped by what it watches.

    def _counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

    def _gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(
            name,
            documentation,
            labels,
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=buckets,
        )

    def _declare_event_path(self) -> None:
        """From a notification to a sandbox commit: received, buffered, applied, lag."""
        self.notifications_received = self._counter(
            "notifications_received",
            "Notifications received from production on the change channel.",
        )
        self.notifications_malformed = self._counter(
            "notifications_malformed",
            "Notifications that could not be used, by reason.",
            ["reason"],
        )
        self.keys_coalesced = self._counter(
            "keys_coalesced",
            "Duplicate keys merged in the debounce buffer instead of applied twice.",
        )
        self.batches_applied = self._counter(
            "batches_applied",
            "Batches committed to the sandbox (one transaction each), by source.",
            ["source"],
        )
        self.rows_applied = self._counter(
            "rows_applied",
            "Sandbox rows updated because a mapped value really differed, by source.",
            ["source"],
        )
        self.rows_failed = self._counter(
            "rows_failed",
            "Rows the sandbox rejected (isolated and reported), by source.",
            ["source"],
        )
        self.propagation_lag = self._histogram(
            "propagation_lag_seconds",
            "Time from the production change to the sandbox commit that mirrors it.",
            LAG_BUCKETS,
        )
        self.debounce_buffer_keys = self._gauge(
            "debounce_buffer_keys",
            "Distinct keys waiting in the debounce buffer.",
        )

    def _declare_reconcile(self) -> None:
        """Full reconciles: how often, how long, and how much drift they found."""
        self.reconcile_runs = self._counter(
            "reconcile_runs",
            "Full reconciles run, by source and result.",
            ["source", "result"],
        )
        self.reconcile_duration = self._histogram(
            "reconcile_duration_seconds",
            "Wall time of a full reconcile, by source.",
            RECONCILE_DURATION_BUCKETS,
            ["source"],
        )
        self.reconcile_differences = self._counter(
            "reconcile_differences",
            "Rows a reconcile found different (drift the listener had not converged), by source.",
            ["source"],
        )
        self.reconcile_last_differences = self._gauge(
            "reconcile_last_differences",
            "Rows the most recent reconcile found different.",
        )
        self.reconcile_last_success = self._gauge(
            "reconcile_last_success_timestamp_seconds",
            "Unix time the last reconcile finished successfully (0: never).",
        )

    def _declare_health(self) -> None:
        """Connections, leadership, retries, the NOTIFY path and the process's own liveness."""
        self.database_connected = self._gauge(
            "database_connected",
            "1 while the connection to the database is up, else 0.",
            ["database"],
        )
        self.listener_connected = self._gauge(
            "listener_connected",
            "1 while the LISTEN connection to production is up, else 0.",
        )
        self.leader = self._gauge(
            "leader",
            "1 on the replica holding the writer lock, 0 on a standby.",
        )
        self.retries = self._counter(
            "retries",
            "Retries after a failure, by cause.",
            ["cause"],
        )
        self.heartbeat_age = self._gauge(
            "listener_heartbeat_age_seconds",
            "Seconds since the daemon's own heartbeat last came back through NOTIFY.",
        )
        self.notification_queue_usage = self._gauge(
            "notification_queue_usage_ratio",
            "Production's pg_notification_queue_usage(): 1 means NOTIFY starts failing.",
        )
        self.build_info = Info(
            "build",
            "The propagator version running.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.last_loop_timestamp = self._gauge(
            "loop_last_tick_timestamp_seconds",
            "Unix time the daemon's event loop last turned (liveness).",
        )
        self.http_refused = self._counter(
            "http_refused",
            "HTTP requests refused or connections dropped by the endpoint, by reason.",
            ["reason"],
        )

    def _create_series(self) -> None:
        for reason in MALFORMED_REASONS:
            self.notifications_malformed.labels(reason=reason)
        for source in APPLY_SOURCES:
            self.batches_applied.labels(source=source)
            self.rows_applied.labels(source=source)
            self.rows_failed.labels(source=source)
            self.reconcile_duration.labels(source=source)
            self.reconcile_differences.labels(source=source)
            for result in RECONCILE_RESULTS:
                self.reconcile_runs.labels(source=source, result=result)
        for database in DATABASES:
            self.database_connected.labels(database=database).set(0)
        for cause in RETRY_CAUSES:
            self.retries.labels(cause=cause)
        for reason in HTTP_REFUSALS:
            self.http_refused.labels(reason=reason)

    # Helpers: one call per fact, so callers cannot forget a companion metric.

    def observe_lag(self, change_epoch_seconds: float, now: float | None = None) -> float:
        """Record lag from a payload's change time to now; clock skew never yields < 0."""
        lag = max(0.0, (time.time() if now is None else now) - change_epoch_seconds)
        self.propagation_lag.observe(lag)
        return lag

    def record_batch(self, source: str, *, applied: int, failed: int = 0) -> None:
        """A batch committed: count it with its updated and rejected rows."""
        source = _checked(source, APPLY_SOURCES, "source")
        self.batches_applied.labels(source=source).inc()
        if applied:
            self.rows_applied.labels(source=source).inc(applied)
        if failed:
            self.rows_failed.labels(source=source).inc(failed)

    def record_reconcile(
        self,
        source: str,
        *,
        success: bool,
        duration_seconds: float,
        differences: int = 0,
        finished_at: float | None = None,
    ) -> None:
        """A reconcile ended: its run, duration, drift found and, on success, its time."""
        source = _checked(source, APPLY_SOURCES, "source")
        result = "success" if success else "failure"
        self.reconcile_runs.labels(source=source, result=result).inc()
        self.reconcile_duration.labels(source=source).observe(max(0.0, duration_seconds))
        if success:
            self.reconcile_differences.labels(source=source).inc(differences)
            self.reconcile_last_differences.set(differences)
            self.reconcile_last_success.set(time.time() if finished_at is None else finished_at)

    def record_malformed(self, reason: str) -> None:
        """A notification was unusable; an unforeseen reason counts as ``other``."""
        self.notifications_malformed.labels(
            reason=reason if reason in MALFORMED_REASONS else "other"
        ).inc()

    def record_http_refused(self, reason: str) -> None:
        self.http_refused.labels(reason=_checked(reason, HTTP_REFUSALS, "reason")).inc()

    def record_retry(self, cause: str) -> None:
        self.retries.labels(cause=_checked(cause, RETRY_CAUSES, "cause")).inc()

    def set_database_connected(self, database: str, connected: bool) -> None:
        self.database_connected.labels(database=_checked(database, DATABASES, "database")).set(
            1 if connected else 0
        )

    def mark_loop_tick(self, now: float | None = None) -> None:
        """The event loop turned: the liveness signal behind ``/healthz``."""
        self._last_tick_monotonic = time.monotonic()
        self.last_loop_timestamp.set(time.time() if now is None else now)

    def loop_tick_age(self) -> float | None:
        """Seconds since ``mark_loop_tick`` (monotonic clock), None before the first tick."""
        if self._last_tick_monotonic is None:
            return None
        return time.monotonic() - self._last_tick_monotonic

    def loop_alive(self, max_age_seconds: float) -> bool:
        """A liveness callable for ``HttpServer``: the loop ticked within ``max_age_seconds``."""
        age = self.loop_tick_age()
        return age is not None and age <= max_age_seconds

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
