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
    "checked",
]

NAMESPACE: Final = "propagator"

#: Where a write came from: a notification, the catch-up after (re)connect, the
#: periodic reconcile, one asked for by a person (CLI or HTTP), or the reconcile
#: run because the sandbox was refreshed under the daemon.
APPLY_SOURCES: Final = ("event", "catchup", "reconcile", "manual", "refresh")
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


def checked(value: str, allowed: Iterable[str], label: str) -> str:
    """Refuse a label value outside its fixed set: unbounded labels would explode series."""
    if value not in allowed:
        raise ValueError(f"{label} label {value!r} is not one of {', '.join(allowed)}")
    return value


class Metrics:
    """The daemon's metrics; attribute names are the contract the rest of the code uses.

    Every metric of one mapping's work carries a ``mapping`` label (its name, from
    the configuration: a small, fixed set); ``MappingMetrics`` binds it.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, mappings: Sequence[str] = ("default",)
    ) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            # Process memory, CPU and file descriptors, as every Prometheus exporter offers.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self._last_tick_monotonic: float | None = None
        self._mappings: set[str] = set()
        # Declared in this order, which is the order of the exposition.
        self._declare_event_path()
        self._declare_reconcile()
        self._declare_health()
        self._declare_refresh()
        self._declare_slot()
        self._declare_stalls()
        self.build_info.info({"version": __version__})
        self._create_series(mappings)

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
            ["mapping"],
        )
        self.notifications_malformed = self._counter(
            "notifications_malformed",
            "Notifications that could not be used, by reason.",
            ["mapping", "reason"],
        )
        self.keys_coalesced = self._counter(
            "keys_coalesced",
            "Duplicate keys merged in the debounce buffer instead of applied twice.",
            ["mapping"],
        )
        self.batches_applied = self._counter(
            "batches_applied",
            "Batches committed to the sandbox (one transaction each), by source.",
            ["mapping", "source"],
        )
        self.rows_applied = self._counter(
            "rows_applied",
            "Sandbox rows updated because a mapped value really differed, by source.",
            ["mapping", "source"],
        )
        self.rows_failed = self._counter(
            "rows_failed",
            "Rows the sandbox rejected (isolated and reported), by source.",
            ["mapping", "source"],
        )
        self.rows_deferred = self._counter(
            "rows_deferred",
            "Rows not written because a sandbox session held them; retried later, not failed.",
            ["mapping", "source"],
        )
        self.propagation_lag = self._histogram(
            "propagation_lag_seconds",
            "Time from the production change to the sandbox commit that mirrors it.",
            LAG_BUCKETS,
            ["mapping"],
        )
        self.debounce_buffer_keys = self._gauge(
            "debounce_buffer_keys",
            "Distinct keys waiting in the debounce buffer.",
            ["mapping"],
        )

    def _declare_reconcile(self) -> None:
        """Full reconciles: how often, how long, and how much drift they found."""
        self.reconcile_runs = self._counter(
            "reconcile_runs",
            "Full reconciles run, by source and result.",
            ["mapping", "source", "result"],
        )
        self.reconcile_duration = self._histogram(
            "reconcile_duration_seconds",
            "Wall time of a full reconcile, by source.",
            RECONCILE_DURATION_BUCKETS,
            ["mapping", "source"],
        )
        self.reconcile_differences = self._counter(
            "reconcile_differences",
            "Rows a reconcile found different (drift the listener had not converged), by source.",
            ["mapping", "source"],
        )
        self.reconcile_last_differences = self._gauge(
            "reconcile_last_differences",
            "Rows the most recent reconcile found different.",
            ["mapping"],
        )
        self.reconcile_last_success = self._gauge(
            "reconcile_last_success_timestamp_seconds",
            "Unix time the last reconcile finished successfully (0: never).",
            ["mapping"],
        )

    def _declare_health(self) -> None:
        """Connections, leadership, retries, the NOTIFY path and the process's own liveness."""
        self.database_connected = self._gauge(
            "database_connected",
            "1 while the connection to the database is up, else 0.",
            ["mapping", "database"],
        )
        self.listener_connected = self._gauge(
            "listener_connected",
            "1 while the LISTEN connection to production is up, else 0.",
            ["mapping"],
        )
        self.leader = self._gauge(
            "leader",
            "1 on the replica holding the writer lock, 0 on a standby.",
            ["mapping"],
        )
        self.retries = self._counter(
            "retries",
            "Retries after a failure, by cause.",
            ["mapping", "cause"],
        )
        self.heartbeat_age = self._gauge(
            "listener_heartbeat_age_seconds",
            "Seconds since the daemon's own heartbeat last came back through NOTIFY.",
            ["mapping"],
        )
        self.notification_queue_usage = self._gauge(
            "notification_queue_usage_ratio",
            "Production's pg_notification_queue_usage(): 1 means NOTIFY starts failing.",
            ["mapping"],
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

    def _declare_refresh(self) -> None:
        """Sandbox refreshes: a table or database replaced under the daemon."""
        self.sandbox_refreshes = self._counter(
            "sandbox_refreshes",
            "Sandbox refreshes noticed (table recreated, truncated or reloaded, database "
            "recreated), each answered by a full reconcile with source refresh.",
            ["mapping"],
        )

    def _declare_slot(self) -> None:
        """Logical capture: what the slot costs production, and slots lost and recreated."""
        self.slot_retained_wal = self._gauge(
            "capture_slot_retained_wal_bytes",
            "WAL production keeps for the logical capture's slot (pg_current_wal_lsn() minus its "
            "restart_lsn); -1 while the slot is missing. Absent with capture = notify.",
            ["mapping"],
        )
        self.slot_recreated = self._counter(
            "capture_slot_recreated",
            "Logical slots found invalidated (WAL removed past max_slot_wal_keep_size) and "
            "recreated, each followed by a full reconcile.",
            ["mapping"],
        )

    def _declare_stalls(self) -> None:
        """What the event path alone cannot tell: triggers gone, keys stuck, changes missed."""
        self.triggers_current = self._gauge(
            "triggers_current",
            "1 while the production triggers of the mapping's table are installed, enabled and "
            "current, else 0 (checked every heartbeat interval).",
            ["mapping"],
        )
        self.oldest_pending_key_age = self._gauge(
            "oldest_pending_key_age_seconds",
            "Seconds the oldest key waiting to be applied (buffered or in a batch) has waited; "
            "0 when nothing waits.",
            ["mapping"],
        )
        self.reconcile_missed_drift = self._gauge(
            "reconcile_missed_drift",
            "Rows the last periodic or manual reconcile found different although no change "
            "notification for them was pending: drift the event path missed.",
            ["mapping"],
        )

    def _create_series(self, mappings: Sequence[str]) -> None:
        for reason in HTTP_REFUSALS:
            self.http_refused.labels(reason=reason)
        for mapping in mappings:
            self.create_mapping_series(mapping)

    def create_mapping_series(self, mapping: str) -> None:
        """Every series of one mapping at 0, so alert rules see it from the first scrape."""
        if mapping in self._mappings:
            return
        self._mappings.add(mapping)
        for reason in MALFORMED_REASONS:
            self.notifications_malformed.labels(mapping=mapping, reason=reason)
        for source in APPLY_SOURCES:
            self.batches_applied.labels(mapping=mapping, source=source)
            self.rows_applied.labels(mapping=mapping, source=source)
            self.rows_failed.labels(mapping=mapping, source=source)
            self.rows_deferred.labels(mapping=mapping, source=source)
            self.reconcile_duration.labels(mapping=mapping, source=source)
            self.reconcile_differences.labels(mapping=mapping, source=source)
            for result in RECONCILE_RESULTS:
                self.reconcile_runs.labels(mapping=mapping, source=source, result=result)
        for database in DATABASES:
            self.database_connected.labels(mapping=mapping, database=database).set(0)
        for cause in RETRY_CAUSES:
            self.retries.labels(mapping=mapping, cause=cause)
        for family in (
            self.notifications_received,
            self.keys_coalesced,
            self.debounce_buffer_keys,
            self.reconcile_last_differences,
            self.reconcile_last_success,
            self.listener_connected,
            self.leader,
            self.heartbeat_age,
            self.notification_queue_usage,
        ):
            family.labels(mapping=mapping)
        self.propagation_lag.labels(mapping=mapping)
        for stall in (
            self.triggers_current,
            self.oldest_pending_key_age,
            self.reconcile_missed_drift,
        ):
            stall.labels(mapping=mapping)
        self.sandbox_refreshes.labels(mapping=mapping)
        self.slot_recreated.labels(mapping=mapping)

    # Process-wide helpers; per-mapping ones are on ``MappingMetrics``.

    def record_http_refused(self, reason: str) -> None:
        self.http_refused.labels(reason=checked(reason, HTTP_REFUSALS, "reason")).inc()

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
