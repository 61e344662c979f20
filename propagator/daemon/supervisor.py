"""The supervisor behind ``propagator run``: builds the parts, runs them, stops them.

One process, one asyncio loop, one stop event (set by SIGTERM/SIGINT or
``request_stop``), and a handful of small tasks that share it: leadership, the
capture loop, the pipeline's lanes, the reconcile schedule, history retention,
the ticker, plus the HTTP server. A task that ends on its own stops the whole
service with a non-zero exit rather than leaving a half-working process behind.
The parts come from factories, so the scheduling rules run in tests on fakes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from typing import Any

from propagator.core.debounce import PartitionedBuffer
from propagator.core.redact import mask_url
from propagator.daemon.capture import CaptureLoop
from propagator.daemon.factories import (
    CaptureFactory,
    LockFactory,
    WriterFactory,
    advisory_lock,
    notify_capture,
    sandbox_writer,
)
from propagator.daemon.housekeeping import HistoryPruner, ReconcileSchedule, Ticker
from propagator.daemon.jobs import WriteJobs
from propagator.daemon.leadership import Leadership
from propagator.daemon.pipeline import ManualWaiter, Pipeline
from propagator.daemon.requests import ReconcileRequests
from propagator.daemon.retry import Retrier
from propagator.daemon.shutdown import StopSignals, TaskSet
from propagator.daemon.status import DaemonState, Role
from propagator.daemon.web import start_http
from propagator.daemon.writers import Lane
from propagator.errors import ExitCode
from propagator.observability.http import HttpServer
from propagator.observability.logging import bind_context, get_logger
from propagator.observability.metrics import Metrics
from propagator.services.history import History, HistoryReader
from propagator.settings import Settings
from propagator.version import __version__

__all__ = ["CRASHED", "Daemon"]

_log = get_logger("propagator.daemon")
# Event batches are applied by this many lanes, each over its own share of the
# keys (by hash) with its own connections: while one waits for a server, the other
# reads, plans or writes, so the event path keeps up with a busy production.
_APPLIERS = 2
CRASHED = 1


class Daemon:
    """Keeps the sandbox converged until asked to stop; ``run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        instance_id: str | None = None,
        handle_signals: bool = True,
        serve_http: bool = True,
        capture_factory: CaptureFactory = notify_capture,
        lock_factory: LockFactory = advisory_lock,
        writer_factory: WriterFactory = sandbox_writer,
        history: History | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.instance_id = instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.handle_signals = handle_signals
        self.serve_http = serve_http
        self.state = DaemonState()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()  # set once every task runs (for embedding callers)
        self.http: HttpServer | None = None
        self.listener = capture_factory(settings, self.instance_id)
        self.lock = lock_factory(settings, self.instance_id)
        self.history = history or History(settings)
        self.history_reader = (
            HistoryReader(self.history, settings) if self.history.enabled else None
        )
        self._build_parts(writer_factory)

    def _build_parts(self, writer_factory: WriterFactory) -> None:
        settings, metrics, state = self.settings, self.metrics, self.state
        self.buffer = PartitionedBuffer(
            _APPLIERS,
            quiet=settings.debounce_quiet,
            max_delay=settings.debounce_max_delay,
            max_keys=settings.debounce_max_keys,
            hard_cap=settings.buffer_max_keys,
        )
        self.lanes = tuple(
            Lane(number, partition, writer_factory(settings, self.history))
            for number, partition in enumerate(self.buffer.partitions)
        )
        self.writer = self.lanes[0].writer  # also runs the full reconciles
        self.retrier = Retrier(
            settings, metrics, sleep=self._sleep, stopping=self._stop.is_set, on_error=self._error
        )
        self.leadership = Leadership(
            self.lock,
            state,
            metrics,
            self.retrier,
            poll_seconds=settings.standby_poll_interval.total_seconds(),
            on_promoted=lambda: self.pipeline.on_promoted(),
            on_demoted=lambda why: self.pipeline.on_demoted(why),
        )
        requests: ReconcileRequests[ManualWaiter] = ReconcileRequests()
        jobs = WriteJobs(
            metrics=metrics,
            state=state,
            retrier=self.retrier,
            leadership=self.leadership,
            report_limit=settings.report_limit,
            want_reconcile=lambda why: self.pipeline.want_reconcile(why),
        )
        self.pipeline = Pipeline(
            self.buffer,
            self.lanes,
            state=state,
            metrics=metrics,
            leadership=self.leadership,
            jobs=jobs,
            requests=requests,
            stop=self._stop,
        )
        self.pipeline.capture_connected = lambda: self.listener.connected
        self.capture = CaptureLoop(
            self.listener,
            channel=settings.channel,
            metrics=metrics,
            retrier=self.retrier,
            stopping=self._stop.is_set,
            on_connected=self.pipeline.on_capture_connected,
            on_captured=self.pipeline.on_captured,
            on_lost=self._error,
        )
        self.ticker = Ticker(metrics, self._sample)

    # Public surface: state, status, readiness, liveness, stop.

    @property
    def role(self) -> Role:
        return self.state.role

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    @property
    def catchup_done(self) -> bool:
        return self.state.catchup_done

    @property
    def last_reconcile(self) -> dict[str, Any] | None:
        summary = self.state.last_reconcile
        return None if summary is None else summary.as_dict()

    @property
    def last_batch(self) -> dict[str, Any] | None:
        summary = self.state.last_batch
        return None if summary is None else summary.as_dict()

    @property
    def last_lag(self) -> float | None:
        """Seconds from the earliest production change of the last batch to its commit."""
        return self.state.last_lag

    @property
    def last_error(self) -> str | None:
        return self.state.last_error

    @property
    def crashed(self) -> str | None:
        return self.state.crashed

    @property
    def in_flight_keys(self) -> int:
        """Keys in the batches being applied right now."""
        return self.pipeline.in_flight_keys

    def request_stop(self) -> None:
        """Ask for a graceful stop; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)

    async def reconcile_now(self) -> dict[str, Any]:
        """Run a full reconcile (source ``manual``) next; its summary."""
        return await self.pipeline.reconcile_now()

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows: role, connections, buffer, last reconcile and batch."""
        settings, state = self.settings, self.state
        return {
            "instance_id": self.instance_id,
            "version": __version__,
            "role": state.role,
            "started_at": state.started_at.isoformat(),
            "uptime_seconds": state.uptime_seconds(),
            "connections": {
                "production_listener": self.listener.connected,
                "sandbox_lock": self.lock.connected,
                "writer": all(lane.writer.connected() for lane in self.lanes),
            },
            "catchup_done": state.catchup_done,
            "pending_keys": len(self.buffer),
            "in_flight_keys": self.in_flight_keys,
            "last_batch": self.last_batch,
            "last_reconcile": self.last_reconcile,
            "last_lag_seconds": state.last_lag,
            "heartbeat_age_seconds": round(self.listener.heartbeat_age, 3),
            "notification_queue_usage": self.listener.queue_usage,
            "last_error": state.last_error,
            "channel": settings.channel,
            "production": _where(settings.production_table_name, settings.production_url()),
            "sandbox": _where(settings.sandbox_table_name, settings.sandbox_url()),
            "leader_lock_id": self.lock.lock_id,
            "history": self.history.describe(),
        }

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when both databases answer, the role is known and (as leader) caught up."""
        reasons: list[str] = []
        if not self.listener.connected:
            reasons.append("production listener not connected")
        if not self.lock.connected:
            reasons.append("sandbox not connected")
        if self.role == "starting":
            reasons.append("role not known yet")
        if self.role == "leader" and not self.catchup_done:
            reasons.append("catch-up reconcile not finished")
        return not reasons, reasons

    def liveness(self) -> bool:
        return self.ticker.alive()

    # Running.

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, non-zero when a task crashed."""
        self._loop = asyncio.get_running_loop()
        for lane in self.lanes:
            lane.wake = asyncio.Event()
        bind_context(instance=self.instance_id)
        signals = StopSignals(self._stop, self.pipeline.poke, enabled=self.handle_signals)
        signals.install(self._loop)
        settings = self.settings
        _log.info(
            "daemon_starting",
            version=__version__,
            production=_where(settings.production_table_name, settings.production_url()),
            sandbox=_where(settings.sandbox_table_name, settings.sandbox_url()),
            channel=settings.channel,
            leader_lock_id=self.lock.lock_id,
        )
        if self.serve_http:
            self.http = await start_http(
                settings,
                self.metrics,
                status=self.status,
                readiness=self.readiness,
                liveness=self.liveness,
                history=self.history_reader,
                reconcile=self.reconcile_now,
            )
        tasks = TaskSet(self._stop, self.state)
        self._start_tasks(tasks)
        self.started.set()
        await tasks.wait_first()
        self.pipeline.poke()
        in_time = await tasks.shutdown(
            self.settings.shutdown_timeout, self._cancel_writes, lambda: len(self.buffer)
        )
        if in_time and not self.state.crashed:
            await self.pipeline.drain_late_keys()
        await self._close()
        signals.remove(self._loop)
        if self.state.crashed:
            _log.error("daemon_stopped", reason=self.state.crashed)
            return CRASHED
        _log.info("daemon_stopped", reason="signal or request")
        return ExitCode.OK

    def _start_tasks(self, tasks: TaskSet) -> None:
        stopping, sleep = self._stop.is_set, self._sleep
        tasks.start("leader", self.leadership.run(stopping, sleep))
        tasks.start("listener", self.capture.run())
        tasks.start("ticker", self.ticker.run(stopping, sleep))
        for lane in self.lanes:
            name = "applier" if lane.number == 0 else f"applier {lane.number}"
            tasks.start(name, self.pipeline.run_lane(lane))
        interval = self.settings.reconcile_interval.total_seconds()
        if interval > 0:
            schedule = ReconcileSchedule(
                interval, lambda: self.is_leader, self.pipeline.want_reconcile
            )
            tasks.start("scheduler", schedule.run(stopping, sleep))
        if self.history.enabled:
            pruner = HistoryPruner(self.settings, self.history, lambda: self.is_leader)
            tasks.start("history_pruner", pruner.run(stopping, sleep))

    def _cancel_writes(self) -> None:
        for lane in self.lanes:
            lane.writer.cancel()  # a running batch rolls back: never half-applied

    async def _close(self) -> None:
        await self.leadership.release()
        await self.listener.close()
        for lane in self.lanes:
            await asyncio.to_thread(lane.writer.reset)
        if self.http is not None:
            await self.http.stop()
        if self.history_reader is not None:
            await asyncio.to_thread(self.history_reader.close)

    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early on stop (retry waits never delay a shutdown)."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return

    def _error(self, message: str) -> None:
        self.state.last_error = message

    def _sample(self) -> None:
        self.metrics.debounce_buffer_keys.set(len(self.buffer))
        if self.listener.connected:
            self.capture.sample()


def _where(table: object, url: str) -> str:
    return f"{table} @ {mask_url(url)}"
