"""The two kinds of write the pipeline runs: a debounced batch, and a full reconcile.

Each runs in a worker thread on its lane's writer, retried while this process
leads; each leaves a summary (``/status``), a log line and metrics behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from propagator.adapters.postgres import translate_error
from propagator.core.debounce import Batch
from propagator.core.mapping import Key, format_key
from propagator.core.plan import DuplicateKeyError, RowFailure
from propagator.core.report import ReconcileReport
from propagator.daemon.leadership import Leadership
from propagator.daemon.requests import ReconcileJob, ReconcileSource
from propagator.daemon.retry import Retrier
from propagator.daemon.status import BatchSummary, DaemonState, ReconcileSummary
from propagator.daemon.writers import Lane, Writer
from propagator.errors import PermanentError
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.services.converge import BatchResult

__all__ = ["WriteJobs"]

T = TypeVar("T")
# Rows a sandbox user held are tried again this long after (the lock is likely still held at once).
BUSY_RETRY_SECONDS = 1.0
_log = get_logger("propagator.daemon")


class _BatchRefused(Exception):
    """The databases refused a debounced batch for good (e.g. a key of the wrong type)."""


async def in_thread(work: Callable[[], T], what: str, writer: Writer) -> T:
    """Run sync database work in a thread; on failure, drop the writer's connections."""

    def guarded() -> T:
        try:
            return work()
        except DuplicateKeyError as error:
            raise PermanentError(str(error)) from None
        except psycopg.Error as error:  # adapters translate their own; this is a backstop
            raise translate_error(error, "sandbox", what) from None

    try:
        return await asyncio.to_thread(guarded)
    except BaseException:
        await asyncio.to_thread(writer.reset)
        raise


class WriteJobs:
    """Applies batches and runs full reconciles, reporting each into state, logs and metrics."""

    def __init__(
        self,
        *,
        metrics: MappingMetrics,
        state: DaemonState,
        retrier: Retrier,
        leadership: Leadership,
        report_limit: int,
        want_reconcile: Callable[[str], None],
        requeue: Callable[[Sequence[Key]], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.state = state
        self.retrier = retrier
        self.leadership = leadership
        self.report_limit = report_limit
        self._want_reconcile = want_reconcile
        self._requeue = requeue

    async def apply_batch(self, lane: Lane, batch: Batch) -> None:
        """Converge ``batch``'s keys; a batch refused for good is dropped for a full reconcile."""
        fence = self.leadership.lock.fence()
        writer = lane.writer

        async def attempt() -> BatchResult:
            try:
                return await in_thread(
                    lambda: writer.apply(batch, fence), "applying a batch", writer
                )
            except PermanentError as error:
                raise _BatchRefused(str(error)) from None

        try:
            result = await self.retrier.run(
                "applying a batch", attempt, keep_going=lambda: self.leadership.is_leader
            )
        except _BatchRefused as refused:
            # Keys come from anyone who can NOTIFY: one that cannot even be cast to its
            # column's type would fail this batch forever and block every later one.
            # Drop it; the full reconcile re-reads everything (and retries a real
            # schema problem slowly, as any permanent error).
            lane.in_flight = None
            self.metrics.record_retry("permanent")
            self.state.last_error = str(refused)
            _log.error("batch_refused", keys=len(batch.keys), error=str(refused))
            self._want_reconcile("a batch was refused")
            return
        if result.deferred and self.leadership.is_leader:
            # Held by a sandbox user: kept buffered and retried later, never dropped
            # (on losing leadership they go with the rest of the buffer: the next
            # leader's catch-up covers them).
            lane.buffer.defer(result.deferred, batch.earliest_change, BUSY_RETRY_SECONDS)
        lane.in_flight = None
        self._report_batch(batch, result)

    def _report_batch(self, batch: Batch, result: BatchResult) -> None:
        stats = result.statistics
        self.metrics.record_batch("event", applied=stats.updated, failed=stats.failed)
        self.metrics.record_deferred("event", len(result.deferred))
        lag = None
        if batch.earliest_change is not None and len(result.deferred) < len(batch.keys):
            lag = self.metrics.observe_lag(batch.earliest_change)
            self.state.last_lag = lag
        summary = BatchSummary(
            keys=len(batch.keys),
            updated=stats.updated,
            failed=stats.failed,
            reason=batch.reason,
            lag_seconds=None if lag is None else round(lag, 4),
            duration_seconds=round(result.duration_seconds, 4),
        )
        self.state.last_batch = summary
        if stats.updated:
            self.state.committed()
        _log.info("batch_applied", source="event", **summary.as_dict())
        if result.deferred:
            _log.info("rows_busy", source="event", rows=len(result.deferred))
        _log_failures("event", stats.failures)

    async def reconcile(self, job: ReconcileJob[Any], writer: Writer) -> ReconcileSummary:
        """A full compare-and-converge (the same code as ``propagator reconcile --apply``)."""
        source: ReconcileSource = job.source
        fence = self.leadership.lock.fence()
        _log.info("reconcile_started", source=source, reason=job.reason)

        def failed(_error: BaseException) -> None:
            self.metrics.record_reconcile(source, success=False, duration_seconds=0.0)

        started = time.perf_counter()
        report = await self.retrier.run(
            f"{source} reconcile",
            lambda: in_thread(
                lambda: writer.reconcile(source, fence), f"the {source} reconcile", writer
            ),
            keep_going=lambda: self.leadership.is_leader,
            on_failure=failed,
        )
        return self._report_reconcile(job, report, time.perf_counter() - started)

    def _report_reconcile(
        self, job: ReconcileJob[Any], report: ReconcileReport, duration: float
    ) -> ReconcileSummary:
        stats = report.statistics
        self.metrics.record_reconcile(
            job.source, success=True, duration_seconds=duration, differences=report.differences
        )
        if stats.updated or stats.failed:
            self.metrics.record_batch(job.source, applied=stats.updated, failed=stats.failed)
        self.metrics.record_deferred(job.source, stats.busy)
        if stats.busy_keys and self._requeue is not None:
            # Still held after the reconcile's own retries: the debounce buffer takes over.
            _log.info("rows_busy", source=job.source, rows=stats.busy)
            self._requeue(stats.busy_keys)
        summary = ReconcileSummary(
            source=job.source,
            reason=job.reason,
            method=report.method,
            production_rows=stats.production_rows,
            sandbox_rows=stats.sandbox_rows,
            differences=report.differences,
            updated=stats.updated,
            failed=stats.failed,
            duration_seconds=round(duration, 3),
        )
        self.state.last_reconcile = summary
        if stats.updated:
            self.state.committed()
        _log.info("reconcile_finished", **summary.as_dict())
        _log_failures(job.source, stats.failures[: self.report_limit])
        return summary


def _log_failures(source: str, failures: list[RowFailure]) -> None:
    for failure in failures:
        _log.error("row_rejected", source=source, key=format_key(failure.key), error=failure.error)
