"""One mapping inside the daemon: its buffer, lanes, writers, leader lock and schedule.

Each mapping keeps its own state, its own retries and its own leader lock, so a
mapping whose sandbox is down, or that another replica leads, never stops or
slows the others. What the mappings share (the capture of their production
database, the HTTP endpoint, the stop event) belongs to the supervisor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from propagator.core.debounce import PartitionedBuffer
from propagator.core.redact import mask_url
from propagator.daemon.factories import LockFactory, WriterFactory
from propagator.daemon.housekeeping import HistoryPruner, ReconcileSchedule
from propagator.daemon.jobs import BUSY_RETRY_SECONDS, WriteJobs
from propagator.daemon.leadership import Leadership
from propagator.daemon.pipeline import ManualWaiter, Pipeline
from propagator.daemon.refresh import RefreshWatcher
from propagator.daemon.requests import ReconcileJob, ReconcileRequests
from propagator.daemon.retry import Retrier
from propagator.daemon.shutdown import TaskSet
from propagator.daemon.status import DaemonState, ReconcileSummary
from propagator.daemon.triggerwatch import TriggerWatch
from propagator.daemon.writers import Lane, SandboxWriter
from propagator.observability.logging import bind_context, get_logger, unbind_context
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.services.history import History
from propagator.settings import Settings

_log = get_logger("propagator.daemon")

__all__ = ["APPLIERS", "MappingRuntime"]

# Event batches are applied by this many lanes, each over its own share of the
# keys (by hash) with its own connections: while one waits for a server, the other
# reads, plans or writes, so the event path keeps up with a busy production.
APPLIERS = 2


class MappingRuntime:
    """Everything that keeps one mapping's sandbox converged."""

    def __init__(
        self,
        settings: Settings,
        metrics: MappingMetrics,
        *,
        instance_id: str,
        stop: asyncio.Event,
        sleep: Callable[[float], Awaitable[None]],
        lock_factory: LockFactory,
        writer_factory: WriterFactory,
        history: History,
        schedule_offset: float = 0.0,
    ) -> None:
        self.settings = settings
        self.name = settings.mapping_name
        self.metrics = metrics
        self.state = DaemonState()
        self.stop = stop
        self.sleep = sleep
        self.history = history
        self.schedule_offset = schedule_offset
        self.lock = lock_factory(settings, instance_id)
        self.buffer = PartitionedBuffer(
            APPLIERS,
            quiet=settings.debounce_quiet,
            max_delay=settings.debounce_max_delay,
            max_keys=settings.debounce_max_keys,
            hard_cap=settings.buffer_max_keys,
        )
        self.lanes = tuple(
            Lane(number, partition, writer_factory(settings, history))
            for number, partition in enumerate(self.buffer.partitions)
        )
        self.writer = self.lanes[0].writer  # also runs the full reconciles
        self.triggers: TriggerWatch | None = None  # set by the daemon: one per production table
        self._build_control()
        self.pipeline.on_reconciled = self._reconciled
        self._build_refresh_watcher()

    def _build_control(self) -> None:
        """Retries, leadership and the pipeline that decides what the lanes write next."""
        settings, metrics = self.settings, self.metrics
        self._retry_now = asyncio.Event()
        self.retrier = Retrier(
            settings,
            metrics,
            sleep=self._retry_sleep,
            stopping=self.stop.is_set,
            on_error=self.error,
        )
        self.leadership = Leadership(
            self.lock,
            self.state,
            metrics,
            self.retrier,
            poll_seconds=settings.standby_poll_interval.total_seconds(),
            on_promoted=lambda: self.pipeline.on_promoted(),
            on_demoted=lambda why: self.pipeline.on_demoted(why),
        )
        requests: ReconcileRequests[ManualWaiter] = ReconcileRequests()
        jobs = WriteJobs(
            metrics=metrics,
            state=self.state,
            retrier=self.retrier,
            leadership=self.leadership,
            report_limit=settings.report_limit,
            want_reconcile=lambda why: self.pipeline.want_reconcile(why),
            requeue=lambda keys: self.buffer.defer(keys, None, BUSY_RETRY_SECONDS),
        )
        self.pipeline = Pipeline(
            self.buffer,
            self.lanes,
            state=self.state,
            metrics=metrics,
            leadership=self.leadership,
            jobs=jobs,
            requests=requests,
            stop=self.stop,
        )

    def _build_refresh_watcher(self) -> None:
        """A sandbox written by real writers is a real one, refreshed now and then by people."""
        self.refresh_watcher: RefreshWatcher | None = None
        if isinstance(self.writer, SandboxWriter):
            self.refresh_watcher = RefreshWatcher(
                self.settings,
                self.metrics,
                is_leader=lambda: self.is_leader,
                want_refresh=self._refresh_wanted,
            )
            self.pipeline.check_refresh = self.refresh_watcher.check

    def _refresh_wanted(self, why: str) -> None:
        """A refreshed sandbox is worth a try at once: a write waiting out a permanent
        error (its table was missing mid-restore) retries now instead of a minute later."""
        self.pipeline.want_refresh(why)
        self._retry_now.set()

    async def _retry_sleep(self, seconds: float) -> None:
        """A retry's wait: ends early on stop, or when a sandbox refresh was seen."""
        self._retry_now.clear()
        woken = asyncio.ensure_future(self._retry_now.wait())
        waited = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({woken, waited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            waited.cancel()

    def error(self, message: str) -> None:
        self.state.last_error = message
        if self.refresh_watcher is not None:
            self.refresh_watcher.check_soon()  # a write went wrong: was the sandbox refreshed?

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    def start_tasks(self, tasks: TaskSet, *, suffix: str = "", prune: bool = True) -> None:
        """The mapping's tasks; ``suffix`` tells several mappings' tasks apart in errors.

        ``prune``: this mapping prunes the history table it writes into (one
        mapping per table does, for all of them).
        """
        if suffix:  # the tasks (and their threads) log which mapping they work for
            bind_context(mapping=self.name)
        try:
            self._start(tasks, suffix, prune)
        finally:
            if suffix:
                unbind_context("mapping")

    def _start(self, tasks: TaskSet, suffix: str, prune: bool) -> None:
        stopping = self.stop.is_set
        for lane in self.lanes:
            lane.wake = asyncio.Event()
        tasks.start("leader" + suffix, self.leadership.run(stopping, self.sleep))
        for lane in self.lanes:
            name = "applier" if lane.number == 0 else f"applier {lane.number}"
            tasks.start(name + suffix, self.pipeline.run_lane(lane))
        interval = self.settings.reconcile_interval.total_seconds()
        if interval > 0:
            schedule = ReconcileSchedule(
                interval,
                lambda: self.is_leader,
                self.pipeline.want_reconcile,
                first_offset=self.schedule_offset,
            )
            tasks.start("scheduler" + suffix, schedule.run(stopping, self.sleep))
        if self.refresh_watcher is not None:
            tasks.start("refresh_watcher" + suffix, self.refresh_watcher.run(self.stop))
        if self.history.enabled and prune:
            pruner = HistoryPruner(self.settings, self.history, lambda: self.is_leader)
            tasks.start("history_pruner" + suffix, pruner.run(stopping, self.sleep))

    def cancel_writes(self) -> None:
        for lane in self.lanes:
            lane.writer.cancel()  # a running batch rolls back: never half-applied

    async def close(self) -> None:
        await self.leadership.release()
        for lane in self.lanes:
            await asyncio.to_thread(lane.writer.reset)

    def readiness(self, capture_connected: bool) -> list[str]:
        """Why this mapping is not ready (empty: ready)."""
        reasons: list[str] = []
        if not capture_connected:
            reasons.append(self._capture_reason())
        if not self.lock.connected:
            reasons.append("sandbox not connected")
        if self.state.role == "starting":
            reasons.append("role not known yet")
        if self.state.role == "leader" and not self.state.catchup_done:
            reasons.append("catch-up reconcile not finished")
        if self.triggers is not None and (triggers := self.triggers.readiness_reason()):
            reasons.append(triggers)
        if overdue := self._reconcile_overdue():
            reasons.append(overdue)
        return reasons

    def _capture_reason(self) -> str:
        if self.settings.capture == "notify":
            return "production listener not connected"
        error = self.state.last_error
        return "production slot not streaming" + (f": {error}" if error else "")

    def _reconcile_overdue(self) -> str | None:
        """The writer's full reconciles stopped succeeding: drift the event path misses stays.

        Measured from the daemon's start while none has succeeded yet.
        """
        interval = self.settings.reconcile_interval.total_seconds()
        if interval <= 0 or self.state.role != "leader":
            return None
        last = self.state.last_reconcile
        since = self.state.started_at
        if last is not None:
            since = max(since, datetime.fromisoformat(last.finished_at))
        waited = (datetime.now(UTC) - since).total_seconds()
        if waited <= 2 * interval:
            return None
        what = "last success" if last is not None else "none since the start"
        return (
            f"no reconcile succeeded in the last 2 intervals ({what} {_duration(waited)} ago, "
            f"reconcile_interval {_duration(interval)})"
        )

    def oldest_pending_key_age(self) -> float:
        """Seconds the oldest key not yet applied has waited, in the buffer or in a batch."""
        return max(
            lane.buffer.oldest_age(None if lane.in_flight is None else lane.in_flight.arrived)
            for lane in self.lanes
        )

    def sample_stalls(self) -> None:
        self.metrics.oldest_pending_key_age.set(self.oldest_pending_key_age())

    def _reconciled(self, job: ReconcileJob[Any], summary: ReconcileSummary, notified: int) -> None:
        """A routine reconcile (periodic or manual) tests the event path: what it found beyond
        the keys notified before or during it is drift the event path missed."""
        if job.source == "manual" or (job.source == "reconcile" and job.reason == "periodic"):
            missed = max(0, summary.differences - notified)
            self.metrics.reconcile_missed_drift.set(missed)
            if missed:
                what = "the slot" if self.settings.capture == "logical" else "the notifications"
                _log.warning("reconcile_found_missed_drift", rows=missed, missed_by=what)

    def status(self, capture: Any) -> dict[str, Any]:
        """This mapping's part of ``/status``."""
        settings, state = self.settings, self.state
        return {
            "name": self.name,
            "role": state.role,
            "connections": {
                "production_listener": capture.connected,
                "sandbox_lock": self.lock.connected,
                "writer": all(lane.writer.connected() for lane in self.lanes),
            },
            "catchup_done": state.catchup_done,
            "pending_keys": len(self.buffer),
            "in_flight_keys": self.pipeline.in_flight_keys,
            "oldest_pending_key_age_seconds": round(self.oldest_pending_key_age(), 3),
            "last_batch": None if state.last_batch is None else state.last_batch.as_dict(),
            "last_reconcile": (
                None if state.last_reconcile is None else state.last_reconcile.as_dict()
            ),
            "last_lag_seconds": state.last_lag,
            "heartbeat_age_seconds": round(capture.heartbeat_age, 3),
            "notification_queue_usage": capture.queue_usage,
            "last_error": state.last_error,
            "channel": settings.channel,
            "production": where(settings.production_table_name, settings.production_url()),
            "sandbox": where(settings.sandbox_table_name, settings.sandbox_url()),
            "leader_lock_id": self.lock.lock_id,
            "history": self.history.describe(),
            "triggers": None if self.triggers is None else self.triggers.describe(),
            "capture": capture.describe(),
        }


def where(table: object, url: str) -> str:
    return f"{table} @ {mask_url(url)}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
