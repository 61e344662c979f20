"""The supervisor behind ``propagator run``: builds the parts, runs them, stops them.

One process, one asyncio loop, one stop event (set by SIGTERM/SIGINT or
``request_stop``), and a handful of small tasks that share it: per mapping its
leadership, lanes, reconcile schedule and history retention (``runtime``); per
production database one capture loop whose notifications are routed to every
mapping of the table they name; the ticker and the HTTP server. A task that
ends on its own stops the whole service with a non-zero exit rather than
leaving a half-working process behind. The parts come from factories, so the
scheduling rules run in tests on fakes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from propagator.daemon.factories import (
    CaptureFactory,
    LockFactory,
    SharedProductionWriters,
    WriterFactory,
    advisory_lock,
    capture_for,
)
from propagator.daemon.housekeeping import Ticker
from propagator.daemon.routing import build_captures
from propagator.daemon.runtime import MappingRuntime, where
from propagator.daemon.shutdown import StopSignals, TaskSet
from propagator.daemon.status import DaemonState, Role
from propagator.daemon.triggerwatch import TriggerWatch, watch_triggers
from propagator.daemon.web import start_http
from propagator.daemon.webhooks import WebhookSenders
from propagator.errors import ConfigurationError, ExitCode
from propagator.observability.http import HttpServer
from propagator.observability.logging import bind_context, get_logger
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.observability.metrics import Metrics
from propagator.services.history import History, HistoryReaders
from propagator.settings import Settings
from propagator.settings.webhooks import WebhookSettings
from propagator.version import __version__

__all__ = ["CRASHED", "Daemon"]

_log = get_logger("propagator.daemon")
CRASHED = 1


class Daemon:
    """Keeps the sandboxes converged until asked to stop; ``run()`` returns the exit code.

    ``mappings`` are the mappings served (each its own ``Settings``); without them,
    ``settings`` is the one mapping ``default``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        mappings: Sequence[Settings] | None = None,
        metrics: Metrics | None = None,
        instance_id: str | None = None,
        handle_signals: bool = True,
        serve_http: bool = True,
        capture_factory: CaptureFactory | None = None,
        lock_factory: LockFactory = advisory_lock,
        writer_factory: WriterFactory | None = None,
        history: History | None = None,
        webhooks: Sequence[WebhookSettings] = (),
    ) -> None:
        self.settings = settings
        served = tuple(mappings) if mappings else (settings,)
        self.metrics = metrics or Metrics(mappings=[m.mapping_name for m in served])
        self.instance_id = instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.handle_signals = handle_signals
        self.serve_http = serve_http
        self.process_state = DaemonState()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()  # set once every task runs (for embedding callers)
        self.http: HttpServer | None = None
        self._shared_writers = SharedProductionWriters(served) if writer_factory is None else None
        writer_factory = writer_factory or self._shared_writers
        assert writer_factory is not None
        self.runtimes = tuple(
            MappingRuntime(
                mapping,
                MappingMetrics(self.metrics, mapping.mapping_name),
                instance_id=self.instance_id,
                stop=self._stop,
                sleep=self._sleep,
                lock_factory=lock_factory,
                writer_factory=writer_factory,
                history=history if history is not None and number == 0 else History(mapping),
                schedule_offset=_stagger(mapping, number, len(served)),
            )
            for number, mapping in enumerate(served)
        )
        self._build_captures(capture_factory or capture_for(settings))
        self.trigger_watches = self._watch_triggers()
        primary = self.runtimes[0]
        self.history_reader = (
            HistoryReaders([r.settings for r in self.runtimes]) if primary.history.enabled else None
        )
        self.webhooks = WebhookSenders(webhooks, self.runtimes, self.metrics, self._stop.is_set)
        self.ticker = Ticker(self.metrics, self._sample)
        # The first mapping's parts, by their old names: one-mapping callers use them.
        self.state, self.lock, self.history = primary.state, primary.lock, primary.history
        self.buffer, self.lanes, self.writer = primary.buffer, primary.lanes, primary.writer
        self.pipeline, self.leadership = primary.pipeline, primary.leadership
        self.retrier = primary.retrier
        self.listener, self.capture = self._capture_of[primary.name]

    def _build_captures(self, capture_factory: CaptureFactory) -> None:
        """One capture source per production database, routed to the mappings reading it."""
        built = build_captures(
            self.runtimes,
            lambda mappings: capture_factory(mappings, self.instance_id),
            sleep=self._sleep,
            stopping=self._stop.is_set,
        )
        self.captures = [(source, loop) for source, loop, _ in built]
        self._capture_of = {
            runtime.name: (source, loop) for source, loop, runtimes in built for runtime in runtimes
        }

    def _watch_triggers(self) -> list[TriggerWatch]:
        """The production triggers to watch: none for a logical slot, nor their metric."""
        if self.settings.capture == "notify":
            return watch_triggers(self.runtimes)
        for runtime in self.runtimes:
            self.metrics.triggers_current.remove(runtime.name)
        return []

    # Public surface: state, status, readiness, liveness, stop.

    @property
    def role(self) -> Role:
        return self.state.role

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    @property
    def catchup_done(self) -> bool:
        return all(r.state.catchup_done for r in self.runtimes)

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
        return self.process_state.crashed

    @property
    def in_flight_keys(self) -> int:
        """Keys in the batches being applied right now."""
        return sum(r.pipeline.in_flight_keys for r in self.runtimes)

    def runtime(self, name: str) -> MappingRuntime:
        for runtime in self.runtimes:
            if runtime.name == name:
                return runtime
        raise KeyError(name)

    def request_stop(self) -> None:
        """Ask for a graceful stop; safe to call from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)

    async def reconcile_now(self, mapping: str | None = None) -> dict[str, Any]:
        """Run a full reconcile (source ``manual``) of one mapping next; its summary.

        Without a name: the only mapping, or every mapping in turn (their summaries
        under ``mappings``).
        """
        if mapping is not None:
            try:
                runtime = self.runtime(mapping)
            except KeyError:
                names = ", ".join(r.name for r in self.runtimes)
                raise ConfigurationError(
                    f"no mapping {mapping[:40]!r} here; the mappings are: {names}"
                ) from None
            return await runtime.pipeline.reconcile_now()
        if len(self.runtimes) == 1:
            return await self.pipeline.reconcile_now()
        results = [await r.pipeline.reconcile_now() for r in self.runtimes]
        return {"mappings": {r.name: s for r, s in zip(self.runtimes, results, strict=True)}}

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows: process facts, then each mapping (the first also flat)."""
        mappings = [r.status(self._capture_of[r.name][0]) for r in self.runtimes]
        state = self.process_state
        flat = {k: v for k, v in mappings[0].items() if k != "name"}
        if len(mappings) > 1:
            roles = {m["role"] for m in mappings}
            flat["role"] = roles.pop() if len(roles) == 1 else "mixed"
            flat["catchup_done"] = self.catchup_done
            flat["pending_keys"] = sum(m["pending_keys"] for m in mappings)
            flat["in_flight_keys"] = self.in_flight_keys
        return {
            "instance_id": self.instance_id,
            "version": __version__,
            "started_at": state.started_at.isoformat(),
            "uptime_seconds": state.uptime_seconds(),
            **flat,
            "mappings": mappings,
            **self.webhooks.status_fields(),
        }

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when every mapping's databases answer, its role is known and (as leader) caught
        up; with several mappings each reason names its mapping."""
        reasons: list[str] = []
        for runtime in self.runtimes:
            source = self._capture_of[runtime.name][0]
            found = runtime.readiness(source.connected)
            if len(self.runtimes) > 1:
                found = [f"mapping {runtime.name}: {reason}" for reason in found]
            reasons += found
        return not reasons, reasons

    def liveness(self) -> bool:
        return self.ticker.alive()

    # Running.

    async def run(self) -> int:
        """Run until stopped; 0 after a graceful stop, non-zero when a task crashed."""
        self._loop = asyncio.get_running_loop()
        bind_context(instance=self.instance_id)
        signals = StopSignals(self._stop, self._poke_all, enabled=self.handle_signals)
        signals.install(self._loop)
        _log_starting(self.runtimes)
        if self.serve_http:
            self.http = await start_http(
                self.settings,
                self.metrics,
                status=self.status,
                readiness=self.readiness,
                liveness=self.liveness,
                history=self.history_reader,
                reconcile=self.reconcile_now,
            )
        tasks = TaskSet(self._stop, self.process_state)
        self._start_tasks(tasks)
        self.started.set()
        await tasks.wait_first()
        self._poke_all()
        in_time = await tasks.shutdown(
            self.settings.shutdown_timeout,
            self._cancel_writes,
            lambda: sum(len(r.buffer) for r in self.runtimes),
        )
        if in_time and not self.process_state.crashed:
            for runtime in self.runtimes:
                await runtime.pipeline.drain_late_keys()
        await self._close()
        signals.remove(self._loop)
        if self.process_state.crashed:
            _log.error("daemon_stopped", reason=self.process_state.crashed)
            return CRASHED
        _log.info("daemon_stopped", reason="signal or request")
        return ExitCode.OK

    def _start_tasks(self, tasks: TaskSet) -> None:
        several = len(self.runtimes) > 1
        pruned: set[tuple[str, str]] = set()
        for runtime in self.runtimes:
            table = (runtime.settings.sandbox_url(), runtime.settings.history_schema)
            runtime.start_tasks(
                tasks, suffix=f" [{runtime.name}]" if several else "", prune=table not in pruned
            )
            pruned.add(table)
        for number, (_, capture) in enumerate(self.captures):
            tasks.start("listener" if number == 0 else f"listener {number}", capture.run())
        tasks.start("ticker", self.ticker.run(self._stop.is_set, self._sleep))
        self.webhooks.start_tasks(tasks, self._sleep)
        for number, watch in enumerate(self.trigger_watches):
            name = "trigger check" if number == 0 else f"trigger check {number}"
            tasks.start(name, watch.run(self._stop.is_set, self._sleep))

    def _poke_all(self) -> None:
        for runtime in self.runtimes:
            runtime.pipeline.poke()

    def _cancel_writes(self) -> None:
        for runtime in self.runtimes:
            runtime.cancel_writes()

    async def _close(self) -> None:
        for runtime in self.runtimes:
            await runtime.close()
        for source, _ in self.captures:
            await source.close()
        await self.webhooks.close()
        if self._shared_writers is not None:
            await asyncio.to_thread(self._shared_writers.close)
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

    def _sample(self) -> None:
        for runtime in self.runtimes:
            runtime.metrics.debounce_buffer_keys.set(len(runtime.buffer))
            runtime.sample_stalls()
        for source, capture in self.captures:
            if source.connected:
                capture.sample()
        self.webhooks.sample()


def _log_starting(runtimes: Sequence[MappingRuntime]) -> None:
    for runtime in runtimes:
        settings = runtime.settings
        _log.info(
            "daemon_starting",
            version=__version__,
            mapping=runtime.name,
            production=where(settings.production_table_name, settings.production_url()),
            sandbox=where(settings.sandbox_table_name, settings.sandbox_url()),
            channel=settings.channel,
            leader_lock_id=runtime.lock.lock_id,
        )


def _stagger(mapping: Settings, number: int, count: int) -> float:
    """The first periodic reconcile of mapping ``number`` is delayed by its share of the
    interval, so many mappings never reconcile in the same second."""
    return mapping.reconcile_interval.total_seconds() * number / max(1, count)
