"""One mapping's view of the metrics: every series it touches carries its name.

The daemon's parts work for one mapping each; they take a ``MappingMetrics``
and never pass the label themselves, so no series can be counted under another
mapping's name or without one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from propagator.observability.metrics import (
    APPLY_SOURCES,
    DATABASES,
    MALFORMED_REASONS,
    RETRY_CAUSES,
    Metrics,
    checked,
)

__all__ = ["CaptureMetrics", "MappingMetrics"]


class MappingMetrics:
    """The metrics of mapping ``name``; process-wide ones pass through to ``metrics``."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.metrics = metrics
        self.name = name
        self.registry = metrics.registry
        metrics.create_mapping_series(name)
        self.notifications_received = metrics.notifications_received.labels(mapping=name)
        self.keys_coalesced = metrics.keys_coalesced.labels(mapping=name)
        self.propagation_lag = metrics.propagation_lag.labels(mapping=name)
        self.debounce_buffer_keys = metrics.debounce_buffer_keys.labels(mapping=name)
        self.reconcile_last_differences = metrics.reconcile_last_differences.labels(mapping=name)
        self.reconcile_last_success = metrics.reconcile_last_success.labels(mapping=name)
        self.listener_connected = metrics.listener_connected.labels(mapping=name)
        self.leader = metrics.leader.labels(mapping=name)
        self.heartbeat_age = metrics.heartbeat_age.labels(mapping=name)
        self.notification_queue_usage = metrics.notification_queue_usage.labels(mapping=name)
        self.triggers_current = metrics.triggers_current.labels(mapping=name)
        self.oldest_pending_key_age = metrics.oldest_pending_key_age.labels(mapping=name)
        self.reconcile_missed_drift = metrics.reconcile_missed_drift.labels(mapping=name)
        self.sandbox_refreshes = metrics.sandbox_refreshes.labels(mapping=name)

    def observe_lag(self, change_epoch_seconds: float, now: float | None = None) -> float:
        """Record lag from a payload's change time to now; clock skew never yields < 0."""
        lag = max(0.0, (time.time() if now is None else now) - change_epoch_seconds)
        self.propagation_lag.observe(lag)
        return lag

    def record_batch(self, source: str, *, applied: int, failed: int = 0) -> None:
        """A batch committed: count it with its updated and rejected rows."""
        labels = {"mapping": self.name, "source": checked(source, APPLY_SOURCES, "source")}
        self.metrics.batches_applied.labels(**labels).inc()
        if applied:
            self.metrics.rows_applied.labels(**labels).inc(applied)
        if failed:
            self.metrics.rows_failed.labels(**labels).inc(failed)

    def record_deferred(self, source: str, rows: int) -> None:
        """Rows a sandbox user held were handed back to be retried later."""
        if rows:
            labels = {"mapping": self.name, "source": checked(source, APPLY_SOURCES, "source")}
            self.metrics.rows_deferred.labels(**labels).inc(rows)

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
        labels = {"mapping": self.name, "source": checked(source, APPLY_SOURCES, "source")}
        result = "success" if success else "failure"
        self.metrics.reconcile_runs.labels(**labels, result=result).inc()
        self.metrics.reconcile_duration.labels(**labels).observe(max(0.0, duration_seconds))
        if success:
            self.metrics.reconcile_differences.labels(**labels).inc(differences)
            self.reconcile_last_differences.set(differences)
            self.reconcile_last_success.set(time.time() if finished_at is None else finished_at)

    def record_malformed(self, reason: str) -> None:
        """A notification was unusable; an unforeseen reason counts as ``other``."""
        reason = reason if reason in MALFORMED_REASONS else "other"
        self.metrics.notifications_malformed.labels(mapping=self.name, reason=reason).inc()

    def record_retry(self, cause: str) -> None:
        cause = checked(cause, RETRY_CAUSES, "cause")
        self.metrics.retries.labels(mapping=self.name, cause=cause).inc()

    def record_sandbox_refresh(self) -> None:
        """The sandbox was refreshed under the daemon; a full reconcile follows."""
        self.sandbox_refreshes.inc()

    def set_database_connected(self, database: str, connected: bool) -> None:
        database = checked(database, DATABASES, "database")
        self.metrics.database_connected.labels(mapping=self.name, database=database).set(
            1 if connected else 0
        )

    def set_triggers_current(self, current: bool) -> None:
        self.triggers_current.set(1 if current else 0)

    # Process-wide, passed through.

    def record_http_refused(self, reason: str) -> None:
        self.metrics.record_http_refused(reason)

    def mark_loop_tick(self, now: float | None = None) -> None:
        self.metrics.mark_loop_tick(now)

    def render(self) -> bytes:
        return self.metrics.render()


class _FanoutGauge:
    """One value set on the same gauge of several mappings."""

    def __init__(self, gauges: Sequence[Any]) -> None:
        self._gauges = tuple(gauges)

    def set(self, value: float) -> None:
        for gauge in self._gauges:
            gauge.set(value)


class CaptureMetrics:
    """The capture of one production database, reported under every mapping it serves."""

    def __init__(self, mappings: Sequence[MappingMetrics]) -> None:
        self.mappings = tuple(mappings)
        self.listener_connected = _FanoutGauge([m.listener_connected for m in mappings])
        self.heartbeat_age = _FanoutGauge([m.heartbeat_age for m in mappings])
        self.notification_queue_usage = _FanoutGauge([m.notification_queue_usage for m in mappings])

    def record_retry(self, cause: str) -> None:
        for mapping in self.mappings:
            mapping.record_retry(cause)

    def set_slot_retained(self, retained_bytes: int | None) -> None:
        """The WAL the logical slot retains (None: the slot is missing)."""
        for mapping in self.mappings:
            mapping.metrics.slot_retained_wal.labels(mapping=mapping.name).set(
                -1 if retained_bytes is None else retained_bytes
            )

    def record_slot_recreated(self) -> None:
        for mapping in self.mappings:
            mapping.metrics.slot_recreated.labels(mapping=mapping.name).inc()

    def set_database_connected(self, database: str, connected: bool) -> None:
        for mapping in self.mappings:
            mapping.set_database_connected(database, connected)
