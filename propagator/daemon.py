"""The always-on daemon behind ``propagator run``: composition root and supervisor.

One process, one asyncio loop, one stop event (set by SIGTERM/SIGINT), and a
handful of tasks that share it:

* leader: holds (or, as a standby, polls for) the advisory lock on the sandbox;
* listener: LISTENs on production, turns notifications into keys in the buffer;
* appliers: the only writers — catch-up and full reconciles (applier 0, alone),
  then debounced batches, all through ``services.sync`` (sync psycopg, run in a
  thread). Keys are shared out by hash, so two appliers never hold one key;
  each batch is still one transaction, checked against the leader lock;
* scheduler: asks for a full reconcile every ``reconcile_interval``;
* ticker: the liveness heartbeat and gauges; plus the HTTP server.

A task that ends on its own stops the whole service with a non-zero exit
rather than leaving a half-working process behind. Failures are typed:
``TransientError`` is retried with exponential backoff and jitter for as long
as the process lives, ``PermanentError`` every ``permanent_retry_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import psycopg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
)

from propagator.adapters.leader import (
    LeaderLock,
    LeadershipLostError,
    assert_lock_held,
    lock_id_for,
)
from propagator.adapters.listener import Listener
from propagator.adapters.postgres import connect, translate_error
from propagator.core.debounce import Batch, DebounceBuffer, PartitionedBuffer
from propagator.core.mapping import format_key
from propagator.core.payload import Change, MalformedNotification, Notification, Resync
from propagator.core.plan import DuplicateKeyError, JobMappingResult
from propagator.core.redact import mask_url
from propagator.core.report import ReconcileReport
from propagator.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ExitCode,
    PermanentError,
    PropagatorError,
    TransientError,
)
from propagator.observability.http import HttpServer
from propagator.observability.logging import bind_context, get_logger
from propagator.observability.metrics import Metrics
from propagator.observability.pages import ActionRefusedError, add_web_routes
from propagator.services.history import History, HistoryReader, PruneResult
from propagator.services.sync import BatchResult, SyncContext, SyncSession, converge_keys, reconcile
from propagator.settings import Settings
from propagator.version import __version__

__all__ = ["Daemon", "Role", "run_daemon"]

Role = Literal["starting", "leader", "standby"]
T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

_log = get_logger("propagator.daemon")
_TICK_SECONDS = 1.0
_LIVENESS_SECONDS = 15.0
_PRUNE_CHECK_SECONDS = 5.0
_PRUNE_STATEMENTS_PER_TURN = 20  # then yield for a while: retention is never urgent
# Event batches are applied by this many appliers, each over its own share of the
# keys (by hash) with its own connections: while one waits for a server, the other
# reads, plans or writes, so the event path keeps up with a busy production.
_APPLIERS = 2
CRASHED = 1


class _Stopping(Exception):
    """Raised inside a retry loop once the daemon is stopping or the work lost its point."""


class _BatchRefused(Exception):
    """The databases refused a debounced batch for good (e.g. a key of the wrong type)."""


@dataclass(slots=True)
class _Writer:
    """Sync connections used by the applier thread only (never two batches at once)."""

    settings: Settings
    session: SyncSession | None = None
    context: SyncContext | None = None
    history: History | None = None

    def ensure(self) -> tuple[SyncContext, Connection, Connection]:
        if self.session is None or self.context is None:
            session = SyncSession(self.settings, application_name="propagator applier")
            try:
                session.open_production()
                session.open_sandbox()
                self.context = session.prepare()
                if self.history is not None:
                    setup = self.history.setup(session.sandbox or session.open_sandbox())
                    if setup is not None and setup.applied:
                        _log.info("history_schema_ready", detail=setup.describe())
            except BaseException:
                session.close()
                raise
            self.session = session
        assert self.session.production is not None
        assert self.session.sandbox is not None
        return self.context, self.session.production, self.session.sandbox

    def connected(self) -> bool:
        session = self.session
        return bool(
            session is not None
            and session.production is not None
            and not session.production.closed
            and session.sandbox is not None
            and not session.sandbox.closed
        )

    def cancel(self) -> None:
        """Cancel a running statement from another thread (its transaction rolls back)."""
        session = self.session
        if session is None:
            return
        for conn in (session.production, session.sandbox):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=2)

    def reset(self) -> None:
        session, self.session, self.context = self.session, None, None
        if session is not None:
            with contextlib.suppress(psycopg.Error):
                session.close()


@dataclass(slots=True)
class _Lane:
    """One applier: its share of the buffered keys, its batch in flight, its connections."""

    number: int
    buffer: DebounceBuffer
    writer: _Writer
    wake: asyncio.Event | None = None
    in_flight: Batch | None = None


def _retry_cause(error: BaseException) -> str:
    """The bounded ``cause`` label of a retry."""
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, DatabaseUnavailableError):
        text = str(error)
        if "production" in text:
            return "production_unavailable"
        if "sandbox" in text:
            return "sandbox_unavailable"
    return "transient"


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
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.instance_id = instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.handle_signals = handle_signals
        self.serve_http = serve_http
        self.production_url = settings.production_url()
        self.sandbox_url = settings.sandbox_url()
        self.buffer = PartitionedBuffer(
            _APPLIERS,
            quiet=settings.debounce_quiet,
            max_delay=settings.debounce_max_delay,
            max_keys=settings.debounce_max_keys,
            hard_cap=settings.buffer_max_keys,
        )
        lock_id = settings.leader_lock_id
        if lock_id is None:
            lock_id = lock_id_for(settings.sandbox_table_name)
        self.lock = LeaderLock(
            self.sandbox_url,
            lock_id,
            connect_timeout=settings.connect_timeout,
            probe_timeout=min(settings.heartbeat_timeout, settings.connect_timeout),
            application_name=f"propagator leader {self.instance_id}"[:63],
        )
        self.listener = Listener(
            self.production_url,
            settings.channel,
            instance_id=self.instance_id,
            key_width=len(settings.key_columns),
            heartbeat_interval=settings.heartbeat_interval,
            heartbeat_timeout=settings.heartbeat_timeout,
            connect_timeout=settings.connect_timeout,
            application_name=f"propagator listener {self.instance_id}"[:63],
        )
        self.history = History(settings)
        self.history_reader = (
            HistoryReader(self.history, settings) if self.history.enabled else None
        )
        self._manual_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self.lanes = tuple(
            _Lane(number, partition, _Writer(settings, history=self.history))
            for number, partition in enumerate(self.buffer.partitions)
        )
        self.writer = self.lanes[0].writer  # also runs the full reconciles
        self.http: HttpServer | None = None
        self.role: Role = "starting"
        self.started_at = datetime.now(UTC)
        self.catchup_done = False
        self.last_reconcile: dict[str, Any] | None = None
        self.last_batch: dict[str, Any] | None = None
        self.last_lag: float | None = None
        self.last_error: str | None = None
        self.crashed: str | None = None
        self._catchup_requested = False
        self._reconcile_requested: str | None = None  # why a full reconcile is wanted
        self._last_tick = time.monotonic()
        self._stop: asyncio.Event | None = None
        self._reconciling = False  # a full reconcile is running: the other appliers wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()  # set once every task runs (for embedding callers)

    # Public surface: status, readiness, liveness, stop.

    @property
    def is_leader(self) -> bool:
        return self.role == "leader" and self.lock.held

    @property
    def in_flight_keys(self) -> int:
        """Keys in the batches being applied right now."""
        return sum(len(lane.in_flight.keys) for lane in self.lanes if lane.in_flight)

    def request_stop(self) -> None:
        """Ask for a graceful stop; safe to call from any thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows: role, connections, buffer, last reconcile and batch."""
        now = datetime.now(UTC)
        return {
            "instance_id": self.instance_id,
            "version": __version__,
            "role": self.role,
            "started_at": self.started_at.isoformat(),
            "uptime_seconds": round((now - self.started_at).total_seconds(), 3),
            "connections": {
                "production_listener": self.listener.connected,
                "sandbox_lock": self.lock.connected,
                "writer": all(lane.writer.connected() for lane in self.lanes),
            },
            "catchup_done": self.catchup_done,
            "pending_keys": len(self.buffer),
            "in_flight_keys": self.in_flight_keys,
            "last_batch": self.last_batch,
            "last_reconcile": self.last_reconcile,
            "last_lag_seconds": self.last_lag,
            "heartbeat_age_seconds": round(self.listener.heartbeat_age, 3),
            "notification_queue_usage": self.listener.queue_usage,
            "last_error": self.last_error,
            "channel": self.settings.channel,
            "production": f"{self.settings.production_table_name} @ "
            f"{mask_url(self.production_url)}",
            "sandbox": f"{self.settings.sandbox_table_name} @ {mask_url(self.sandbox_url)}",
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
        return time.monotonic() - self._last_tick < _LIVENESS_SECONDS

    # The supervisor.

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, non-zero when a task crashed."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for lane in self.lanes:
            lane.wake = asyncio.Event()
        bind_context(instance=self.instance_id)
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        _log.info(
            "daemon_starting",
            version=__version__,
            production=f"{self.settings.production_table_name} @ {mask_url(self.production_url)}",
            sandbox=f"{self.settings.sandbox_table_name} @ {mask_url(self.sandbox_url)}",
            channel=self.settings.channel,
            leader_lock_id=self.lock.lock_id,
        )
        if self.serve_http:
            await self._start_http()
        tasks = {
            asyncio.create_task(self._lead(), name="leader"),
            asyncio.create_task(self._listen(), name="listener"),
            asyncio.create_task(self._tick(), name="ticker"),
        }
        for lane in self.lanes:
            name = "applier" if lane.number == 0 else f"applier {lane.number}"
            tasks.add(asyncio.create_task(self._apply(lane), name=name))
        if self.settings.reconcile_interval.total_seconds() > 0:
            tasks.add(asyncio.create_task(self._schedule(), name="scheduler"))
        if self.history.enabled:
            tasks.add(asyncio.create_task(self._prune_history(), name="history_pruner"))
        stop_waiter = asyncio.create_task(self._stop.wait(), name="stop")
        self.started.set()
        done, _ = await asyncio.wait({*tasks, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        stopping = self._stop.is_set()
        for task in done - {stop_waiter}:
            # After a stop request the tasks end on their own; only a failure is a crash then.
            if not stopping or task.cancelled() or task.exception() is not None:
                self._record_crash(task)
        self._stop.set()
        self._poke()
        await self._shutdown(tasks)
        stop_waiter.cancel()
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(signum)
        if self.crashed:
            _log.error("daemon_stopped", reason=self.crashed)
            return CRASHED
        _log.info("daemon_stopped", reason="signal or request")
        return ExitCode.OK

    def _on_signal(self, signum: int) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            _log.warning("signal_repeated", signal=signal.Signals(signum).name)
            return
        _log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self._stop.set()
        self._poke()

    def _record_crash(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.crashed = f"task {task.get_name()} was cancelled"
        elif task.exception() is not None:
            error = task.exception()
            self.crashed = f"task {task.get_name()} failed: {type(error).__name__}: {error}"
            _log.error("task_crashed", task=task.get_name(), error=error, exc_info=error)
        else:
            self.crashed = f"task {task.get_name()} ended unexpectedly"
            _log.error("task_crashed", task=task.get_name(), error="ended unexpectedly")

    async def _start_http(self) -> None:
        self.http = HttpServer(
            self.settings.http_host,
            self.settings.http_port,
            self.metrics,
            self.status,
            self.readiness,
            self.liveness,
        )
        token = self.settings.api_token
        add_web_routes(
            self.http,
            status=self.status,
            history=self.history_reader,
            reconcile=self.reconcile_now,
            api_token=token.get_secret_value() if token else None,
        )
        try:
            await self.http.start()
        except OSError as error:
            self.http = None
            raise ConfigurationError(
                f"cannot serve HTTP on {self.settings.http_host}:{self.settings.http_port}: "
                f"{error.strerror or error}"
            ) from None

    async def _shutdown(self, tasks: set[asyncio.Task[None]]) -> None:
        """Let the tasks finish (the applier drains), then cancel what overstays."""
        timeout = self.settings.shutdown_timeout.total_seconds()
        pending = {t for t in tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                _log.warning(
                    "shutdown_timeout",
                    tasks=sorted(t.get_name() for t in late),
                    pending_keys=len(self.buffer),
                )
                for lane in self.lanes:
                    lane.writer.cancel()  # a running batch rolls back: never half-applied
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=5)
        for task in tasks:
            failed = task.done() and not task.cancelled() and task.exception() is not None
            if failed and self.crashed is None:
                self._record_crash(task)
        await self.lock.release()
        self._set_leader(False)
        await self.listener.close()
        for lane in self.lanes:
            await asyncio.to_thread(lane.writer.reset)
        if self.http is not None:
            await self.http.stop()
        if self.history_reader is not None:
            await asyncio.to_thread(self.history_reader.close)

    # Retrying.

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early on stop (retry waits never delay a shutdown)."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    def _wait_seconds(self, state: RetryCallState) -> float:
        """Backoff doubling from ``retry_initial`` up to ``retry_max``, plus jitter."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, PermanentError):
            return self.settings.permanent_retry_interval.total_seconds()
        initial = self.settings.retry_initial.total_seconds()
        ceiling = self.settings.retry_max.total_seconds()
        exponent = min(state.attempt_number - 1, 62)
        backoff = min(ceiling, initial * 2.0**exponent)
        # Jitter spreads replicas' reconnects apart; it is not a secret.
        return backoff + random.uniform(0, initial)  # noqa: S311

    async def _retrying(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        keep_going: Callable[[], bool] = lambda: True,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Run ``operation`` until it succeeds; raise ``_Stopping`` once it should give up."""

        def should_stop(_state: RetryCallState) -> bool:
            return self._stopping() or not keep_going()

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            assert error is not None
            cause = _retry_cause(error)
            self.metrics.record_retry(cause)
            self.last_error = str(error)
            delay = state.upcoming_sleep
            log = _log.error if cause == "permanent" else _log.warning
            log(
                "retry_scheduled",
                operation=what,
                cause=cause,
                attempt=state.attempt_number,
                retry_in_seconds=round(delay, 3),
                error=str(error),
            )
            if on_failure is not None:
                on_failure(error)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((TransientError, PermanentError)),
            wait=self._wait_seconds,
            stop=should_stop,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and should_stop(attempt.retry_state):
                        raise _Stopping(what)
                    result = await operation()
        except (TransientError, PermanentError) as error:
            if on_failure is not None:
                on_failure(error)
            raise _Stopping(what) from error
        attempts = attempt.retry_state.attempt_number
        if attempts > 1:
            _log.info("recovered", operation=what, attempts=attempts)
        return result

    # Leader election.

    def _set_leader(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)

    async def _lead(self) -> None:
        poll = self.settings.standby_poll_interval.total_seconds()
        announced: Role | None = None
        while not self._stopping():
            if self.role == "leader":
                if not await self.lock.still_held():
                    self._demote("the leader lock connection was lost")
                    announced = None
                    continue
            else:
                try:
                    acquired = await self._retrying(
                        "taking the leader lock",
                        self.lock.try_acquire,
                        on_failure=lambda _e: self.metrics.set_database_connected("sandbox", False),
                    )
                except _Stopping:
                    return
                self.metrics.set_database_connected("sandbox", True)
                if acquired:
                    self._promote()
                    announced = "leader"
                elif announced != "standby":
                    self.role = "standby"
                    self._set_leader(False)
                    announced = "standby"
                    _log.info("standby", leader_lock_id=self.lock.lock_id)
            self.metrics.set_database_connected("sandbox", self.lock.connected)
            await self._sleep(poll)

    def _promote(self) -> None:
        self.role = "leader"
        self._set_leader(True)
        self.catchup_done = False
        self.buffer.clear()
        _log.info("leadership_acquired", leader_lock_id=self.lock.lock_id)
        if self.listener.connected:
            self._request_catchup("leadership acquired")

    def _demote(self, why: str) -> None:
        if self.role == "leader":
            _log.error("leadership_lost", reason=why, dropped_keys=len(self.buffer))
        self.role = "standby"
        self._set_leader(False)
        self.catchup_done = False
        self.buffer.clear()
        for lane in self.lanes:
            lane.in_flight = None
        self.metrics.debounce_buffer_keys.set(0)

    def _request_catchup(self, why: str) -> None:
        self._catchup_requested = True
        self.catchup_done = False
        _log.info("catchup_requested", reason=why)
        self._poke()

    def _poke(self) -> None:
        for lane in self.lanes:
            if lane.wake is not None:
                lane.wake.set()

    # The listener.

    async def _listen(self) -> None:
        connected_before = False
        while not self._stopping():
            try:
                await self._retrying(
                    "connecting the production listener",
                    self.listener.connect,
                    on_failure=lambda _e: self.metrics.set_database_connected("production", False),
                )
            except _Stopping:
                break
            self.metrics.listener_connected.set(1)
            self.metrics.set_database_connected("production", True)
            _log.info(
                "listener_reconnected" if connected_before else "listener_connected",
                channel=self.settings.channel,
                backend_pid=self.listener.backend_pid,
            )
            connected_before = True
            if self.is_leader:
                self._request_catchup("listener connected")
            try:
                while not self._stopping():
                    received = await self.listener.receive(timeout=_TICK_SECONDS)
                    if received:
                        self._on_notifications(received)
                    if not self._stopping():
                        await self.listener.keepalive()
                        self._sample_listener()
            except TransientError as error:
                self.metrics.listener_connected.set(0)
                self.metrics.set_database_connected("production", False)
                self.metrics.record_retry("production_unavailable")
                self.last_error = str(error)
                _log.warning("listener_lost", error=str(error))
        await self.listener.close()
        self.metrics.listener_connected.set(0)
        _log.info("listener_stopped")

    def _sample_listener(self) -> None:
        self.metrics.heartbeat_age.set(self.listener.heartbeat_age)
        if self.listener.queue_usage is not None:
            self.metrics.notification_queue_usage.set(self.listener.queue_usage)

    def _on_notifications(self, items: Sequence[Notification | MalformedNotification]) -> None:
        """Buffer the keys of a batch of notifications; metrics and wake-ups once per batch."""
        self.metrics.notifications_received.inc(len(items))
        leader = self.is_leader
        buffer = self.buffer
        before = [len(lane.buffer) for lane in self.lanes]
        coalesced = 0
        for item in items:
            if isinstance(item, Change):
                if leader:  # a standby applies nothing; its catch-up on takeover covers these
                    coalesced += buffer.add(item.keys, item.changed_at)
            elif isinstance(item, MalformedNotification):
                self.metrics.record_malformed(item.reason)
                _log.warning("notification_malformed", reason=item.reason, detail=item.detail[:200])
            elif isinstance(item, Resync) and leader:
                _log.info("resync_received", changed_at=item.changed_at)
                self._want_reconcile("resync notification")
            # Another replica's heartbeat on the shared channel needs nothing.
        if coalesced:
            self.metrics.keys_coalesced.inc(coalesced)
        if buffer.acknowledge_overflow():
            _log.warning("debounce_overflow", hard_cap=buffer.hard_cap)
            self._want_reconcile("debounce buffer overflow")
        self.metrics.debounce_buffer_keys.set(len(buffer))
        # An idle applier sleeps until its buffer's next deadline, which new keys can
        # only bring forward when they are the first ones or fill a batch.
        for lane, pending_before in zip(self.lanes, before, strict=True):
            pending = len(lane.buffer)
            if pending and (not pending_before or pending >= buffer.max_keys):
                assert lane.wake is not None
                lane.wake.set()

    def _want_reconcile(self, why: str) -> None:
        if self._reconcile_requested is None:
            self._reconcile_requested = why
        self._poke()

    # The appliers: the only writers. Applier 0 also runs every full reconcile, while
    # the others hold back (a reconcile converges keys of every share).

    async def _apply(self, lane: _Lane) -> None:
        assert lane.wake is not None
        while True:
            lane.wake.clear()
            if self._stopping():
                await self._drain(lane)
                return
            if not self.is_leader:
                if lane.number == 0:
                    self._refuse_manual(f"this instance is now a {self.role}", 409)
                await self._idle(lane, _TICK_SECONDS)
                continue
            if self._must_wait_for_reconcile(lane):
                await self._idle(lane, _TICK_SECONDS)
                continue
            try:
                if await self._work_once(lane):
                    # Free again: what gathered meanwhile goes next, without waiting.
                    lane.buffer.batch_finished()
                    self._poke()  # applier 0 may be waiting for the others to finish
                    continue
            except _Stopping:
                continue
            except LeadershipLostError as error:
                await self._lost_fence(error)
                continue
            due_in = lane.buffer.seconds_until_due()
            await self._idle(lane, _TICK_SECONDS if due_in is None else due_in)

    def _must_wait_for_reconcile(self, lane: _Lane) -> bool:
        """A full reconcile is wanted or running: applier 0 runs it once every other
        batch is finished; the others wait until it is done."""
        if not self._exclusive_wanted() or lane.in_flight is not None:
            return False
        return lane.number != 0 or any(other.in_flight for other in self.lanes[1:])

    def _exclusive_wanted(self) -> bool:
        return bool(
            self._reconciling
            or self._catchup_requested
            or self._manual_waiters
            or self._reconcile_requested is not None
        )

    async def _work_once(self, lane: _Lane) -> bool:
        """Do the most urgent piece of writing, if any is due; whether there was one."""
        if self._exclusive_wanted() and lane.in_flight is None:
            self._reconciling = True
            try:
                if self._catchup_requested:
                    await self._full_reconcile("catchup", "listener (re)connected or takeover")
                elif self._manual_waiters:
                    await self._manual_reconcile()
                elif self._reconcile_requested is not None:
                    await self._full_reconcile("reconcile", self._reconcile_requested)
            finally:
                self._reconciling = False
                self._poke()  # the other appliers resume
            return True
        if lane.in_flight is None:
            lane.in_flight = lane.buffer.take()
            self.metrics.debounce_buffer_keys.set(len(self.buffer))
        if lane.in_flight is not None:
            await self._apply_batch(lane, lane.in_flight)
            return True
        return False

    async def _idle(self, lane: _Lane, seconds: float) -> None:
        assert lane.wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lane.wake.wait(), timeout=max(0.001, seconds))

    async def _lost_fence(self, error: LeadershipLostError) -> None:
        _log.error("write_refused_not_leader", error=str(error))
        await self.lock.release()
        self._demote(str(error))

    def _fence(self) -> Callable[[Connection, Sequence[JobMappingResult], str], None]:
        """The in-transaction check that this session still holds the leader lock."""
        pid, lock_id = self.lock.backend_pid, self.lock.lock_id

        def check(conn: Connection, _results: Sequence[JobMappingResult], _source: str) -> None:
            if pid is None:
                raise LeadershipLostError("no leader lock is held by this process; not writing")
            assert_lock_held(conn, lock_id, pid)

        return check

    async def _in_thread(self, work: Callable[[], T], what: str, writer: _Writer) -> T:
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

    async def _apply_batch(self, lane: _Lane, batch: Batch) -> None:
        fence = self._fence()
        writer = lane.writer

        def work() -> BatchResult:
            context, production, sandbox = writer.ensure()
            return converge_keys(
                context,
                production,
                sandbox,
                batch.keys,
                source="event",
                on_applied=self.history.hook(changed_at=batch.earliest_change, after=fence),
            )

        async def attempt() -> BatchResult:
            try:
                return await self._in_thread(work, "applying a batch", writer)
            except PermanentError as error:
                raise _BatchRefused(str(error)) from None

        try:
            result = await self._retrying(
                "applying a batch", attempt, keep_going=lambda: self.is_leader
            )
        except _BatchRefused as refused:
            # Keys come from anyone who can NOTIFY: one that cannot even be cast to its
            # column's type would fail this batch forever and block every later one.
            # Drop it; the full reconcile re-reads everything (and retries a real
            # schema problem slowly, as any permanent error).
            lane.in_flight = None
            self.metrics.record_retry("permanent")
            self.last_error = str(refused)
            _log.error("batch_refused", keys=len(batch.keys), error=str(refused))
            self._want_reconcile("a batch was refused")
            return
        lane.in_flight = None
        stats = result.statistics
        self.metrics.record_batch("event", applied=stats.updated, failed=stats.failed)
        lag = None
        if batch.earliest_change is not None:
            lag = self.metrics.observe_lag(batch.earliest_change)
            self.last_lag = lag
        self.last_batch = {
            "keys": len(batch.keys),
            "updated": stats.updated,
            "failed": stats.failed,
            "reason": batch.reason,
            "lag_seconds": None if lag is None else round(lag, 4),
            "duration_seconds": round(result.duration_seconds, 4),
            "finished_at": datetime.now(UTC).isoformat(),
        }
        _log.info("batch_applied", source="event", **self.last_batch)
        for failure in stats.failures:
            _log.error(
                "row_rejected", source="event", key=format_key(failure.key), error=failure.error
            )

    async def _full_reconcile(
        self, source: Literal["catchup", "reconcile", "manual"], why: str
    ) -> None:
        """A full compare-and-converge (the same code as ``propagator reconcile --apply``)."""
        if source == "catchup":
            self._catchup_requested = False
        else:
            self._reconcile_requested = None
        fence = self._fence()
        settings = self.settings
        _log.info("reconcile_started", source=source, reason=why)

        def work() -> ReconcileReport:
            context, _, _ = self.writer.ensure()
            report = ReconcileReport(
                dry_run=False,
                production=f"{settings.production_table_name} @ {mask_url(self.production_url)}",
                sandbox=f"{settings.sandbox_table_name} @ {mask_url(self.sandbox_url)}",
                fields=context.spec.target_columns,
                limit=settings.report_limit,
            )
            opened: list[Connection] = []

            def open_connection(side: Literal["production", "sandbox"]) -> Connection:
                url = self.production_url if side == "production" else self.sandbox_url
                conn = connect(
                    url,
                    side,
                    connect_timeout=settings.connect_timeout.total_seconds(),
                    statement_timeout=settings.statement_timeout,
                    application_name=f"propagator {source}",
                )
                opened.append(conn)
                return conn

            try:
                return reconcile(
                    context,
                    open_connection,
                    report,
                    apply=True,
                    source=source,
                    on_applied=self.history.hook(after=fence),
                    method=self.settings.reconcile_method,
                )
            finally:
                for conn in opened:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()

        def failed(_error: BaseException) -> None:
            self.metrics.record_reconcile(source, success=False, duration_seconds=0.0)

        started = time.perf_counter()
        try:
            report = await self._retrying(
                f"{source} reconcile",
                lambda: self._in_thread(work, f"the {source} reconcile", self.writer),
                keep_going=lambda: self.is_leader,
                on_failure=failed,
            )
        except BaseException:
            if source == "catchup":
                self._catchup_requested = self.is_leader
            elif source == "reconcile" and self.is_leader:
                self._reconcile_requested = self._reconcile_requested or why
            raise
        duration = time.perf_counter() - started
        stats = report.statistics
        self.metrics.record_reconcile(
            source, success=True, duration_seconds=duration, differences=report.differences
        )
        if stats.updated or stats.failed:
            self.metrics.record_batch(source, applied=stats.updated, failed=stats.failed)
        self.last_reconcile = {
            "source": source,
            "reason": why,
            "method": report.method,
            "production_rows": stats.production_rows,
            "sandbox_rows": stats.sandbox_rows,
            "differences": report.differences,
            "updated": stats.updated,
            "failed": stats.failed,
            "duration_seconds": round(duration, 3),
            "finished_at": datetime.now(UTC).isoformat(),
        }
        _log.info("reconcile_finished", **self.last_reconcile)
        for failure in stats.failures[: settings.report_limit]:
            _log.error(
                "row_rejected", source=source, key=format_key(failure.key), error=failure.error
            )
        if source == "catchup" and not self._catchup_requested:
            self.catchup_done = True

    async def _drain(self, lane: _Lane) -> None:
        """On stop: apply what is in flight and pending, once, within the shutdown budget."""
        if not self.is_leader:
            return
        batches = 0
        while self.is_leader:
            batch = lane.in_flight or lane.buffer.take("drain")
            if batch is None:
                break
            lane.in_flight = batch
            try:
                await self._apply_batch(lane, batch)
            except _Stopping:
                _log.warning("drain_incomplete", pending_keys=len(lane.buffer) + len(batch.keys))
                return
            except LeadershipLostError as error:
                await self._lost_fence(error)
                return
            batches += 1
        _log.info("drain_finished", batches=batches, applier=lane.number)

    # Reconcile on request (POST /reconcile), serialized with every other write by the applier.

    async def reconcile_now(self) -> dict[str, Any]:
        """Have the applier run a full reconcile (source ``manual``) next; return its summary.

        Requests arriving while one waits share it: one reconcile answers them all.
        """
        if self._stopping() or self._stop is None:
            raise ActionRefusedError("the daemon is stopping", 503)
        if not self.is_leader:
            raise ActionRefusedError(f"this instance is a {self.role}; ask the leader", 409)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._manual_waiters.append(done)
        self._poke()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not done.done():
            done.cancel()
            raise ActionRefusedError("the daemon is stopping", 503)
        return done.result()

    async def _manual_reconcile(self) -> None:
        waiters, self._manual_waiters = self._manual_waiters, []
        try:
            await self._full_reconcile("manual", "requested over HTTP")
        except BaseException as error:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(
                        ActionRefusedError(f"the reconcile did not finish: {error}", 503)
                    )
            raise
        summary = dict(self.last_reconcile or {})
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(summary)

    def _refuse_manual(self, why: str, status: int) -> None:
        waiters, self._manual_waiters = self._manual_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ActionRefusedError(why, status))

    # History retention.

    async def _prune_history(self) -> None:
        """As leader, delete history older than ``history_retention`` in small batches."""
        while not self._stopping():
            if self.is_leader and self.history.prune_due():
                try:
                    result = await asyncio.to_thread(self._prune_once)
                except PropagatorError as error:
                    _log.warning("history_prune_failed", error=str(error))
                else:
                    if result is not None and result.deleted:
                        _log.info(
                            "history_pruned",
                            deleted=result.deleted,
                            statements=result.statements,
                            complete=result.complete,
                        )
            await self._sleep(_PRUNE_CHECK_SECONDS)

    def _prune_once(self) -> PruneResult | None:
        settings = self.settings
        with connect(
            self.sandbox_url,
            "sandbox",
            autocommit=True,
            connect_timeout=settings.connect_timeout.total_seconds(),
            statement_timeout=settings.statement_timeout,
            application_name="propagator history pruner",
        ) as conn:
            return self.history.prune(conn, max_statements=_PRUNE_STATEMENTS_PER_TURN)

    # Scheduler and ticker.

    async def _schedule(self) -> None:
        interval = self.settings.reconcile_interval.total_seconds()
        while not self._stopping():
            await self._sleep(interval)
            if self.is_leader and not self._stopping():
                self._want_reconcile("periodic")

    async def _tick(self) -> None:
        while not self._stopping():
            self._last_tick = time.monotonic()
            self.metrics.mark_loop_tick()
            self.metrics.debounce_buffer_keys.set(len(self.buffer))
            if self.listener.connected:
                self._sample_listener()
            await self._sleep(_TICK_SECONDS)


# Young collections once per 20,000 new container objects instead of 700, and
# each older generation after 20 of the one below instead of 10: see below.
_GC_THRESHOLDS = (20_000, 20, 20)


def tune_garbage_collection() -> None:
    """Let the collector run less often in a process that is this daemon.

    Converging thousands of keys a second allocates objects that reference
    counting frees (a test checks a converged batch leaves no cyclic garbage);
    with the default thresholds the collector still ran a full pass every
    ~0.4 s under unthrottled pgbench, each pausing every thread. Event-path
    benchmark, same machine, two invocations of three runs each: probe lag p99
    506 and 492 ms (no run above 671) with these thresholds, 493 and 745 ms
    (runs up to 811) with the defaults. Process-wide, so only ``run_daemon``
    (its own process) and the benchmark running the daemon call it.
    """
    gc.set_threshold(*_GC_THRESHOLDS)


def run_daemon(settings: Settings) -> int:
    """Run the daemon on a fresh event loop until it stops; return its exit code."""
    tune_garbage_collection()
    return asyncio.run(Daemon(settings).run())
