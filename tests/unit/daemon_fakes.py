"""In-memory stand-ins for the daemon's capture source, leader lock and writers.

They let the supervisor's scheduling rules run in milliseconds without a
database: the capture source hands out what a test pushes, the lock is held
while ``available`` is true, and the writers record what they were asked to do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from propagator.adapters.leader import LeadershipLostError
from propagator.core.debounce import Batch
from propagator.core.payload import Change, MalformedNotification, Notification, Resync
from propagator.core.report import ReconcileReport
from propagator.daemon import Daemon
from propagator.errors import DatabaseUnavailableError
from propagator.observability.metrics import Metrics
from propagator.services.converge import BatchResult
from propagator.services.history import History
from propagator.settings import Settings

__all__ = [
    "FakeCapture",
    "FakeLock",
    "Recorder",
    "build_daemon",
    "eventually",
    "fast_settings",
]


def fast_settings(**overrides: Any) -> Settings:
    """Settings with millisecond timings, no history and no periodic reconcile."""
    values: dict[str, Any] = {
        "production_database_url": "postgresql://propagator@127.0.0.1:1/production",
        "sandbox_database_url": "postgresql://propagator@127.0.0.1:1/sandbox",
        "debounce_quiet": timedelta(milliseconds=5),
        "debounce_max_delay": timedelta(milliseconds=20),
        "retry_initial": timedelta(milliseconds=10),
        "retry_max": timedelta(milliseconds=40),
        "standby_poll_interval": timedelta(milliseconds=20),
        "reconcile_interval": timedelta(0),
        "shutdown_timeout": timedelta(seconds=3),
        "history_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class FakeCapture:
    """A capture source fed by the test; ``drop()`` makes its next keepalive fail."""

    def __init__(self) -> None:
        self.connected = False
        self.backend_pid: int | None = None
        self.heartbeat_age = 0.0
        self.missed: str | None = "listener connected"
        self.describe = lambda: {"kind": "notify", "channels": ["propagator_jobs"]}
        self.queue_usage: float | None = 0.0
        self.connects = 0
        self._pending: list[Notification | MalformedNotification] = []
        self._dropped = False
        self.unread = False  # pushed items wait unread until a final read (timeout 0)

    def push(self, *items: Notification | MalformedNotification) -> None:
        self._pending.extend(items)

    def change(self, *keys: tuple[Any, ...]) -> None:
        self.push(Change(tuple(keys), time.time()))

    def resync(self) -> None:
        self.push(Resync(time.time()))

    def drop(self) -> None:
        self._dropped = True

    async def connect(self) -> None:
        self.connects += 1
        self.connected = True
        self.backend_pid = 1000 + self.connects
        self._dropped = False

    async def receive(self, timeout: float) -> Sequence[Notification | MalformedNotification]:
        deadline = time.monotonic() + min(timeout, 0.02)
        while (not self._pending or self.unread) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        if self.unread and timeout > 0:
            return []
        items, self._pending = self._pending, []
        return items

    async def keepalive(self) -> None:
        if self._dropped:
            self.connected = False
            raise DatabaseUnavailableError("the fake listener was dropped", "production")

    async def close(self) -> None:
        self.connected = False


class FakeLock:
    """A leader lock that is ours while ``available``; its fence checks the same flag."""

    lock_id = 42

    def __init__(self, available: bool = True) -> None:
        self.available = available
        self.held = False
        self.connected = False
        self.backend_pid: int | None = None

    async def try_acquire(self) -> bool:
        self.connected = True
        self.held = self.available
        self.backend_pid = 7 if self.held else None
        return self.held

    async def still_held(self) -> bool:
        if not self.available:
            self.held = False
        return self.held

    async def release(self) -> None:
        self.held = False
        self.connected = False

    def fence(self) -> Callable[[Any], None]:
        def check(_conn: Any) -> None:
            if not self.available:
                raise LeadershipLostError("the fake leader lock is gone; not writing")

        return check


@dataclass
class Recorder:
    """What every writer was asked to do, in order, and any overlap it saw."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    batches: list[tuple[Any, ...]] = field(default_factory=list)
    reconciles: list[str] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=lambda: {"batch": 0, "reconcile": 0})
    overlaps: list[str] = field(default_factory=list)
    reconcile_gate: threading.Event = field(default_factory=threading.Event)
    batch_delay: float = 0.0

    def __post_init__(self) -> None:
        self.reconcile_gate.set()

    def enter(self, kind: str) -> None:
        with self.lock:
            other = "reconcile" if kind == "batch" else "batch"
            if self.active[other] or (kind == "reconcile" and self.active["reconcile"]):
                self.overlaps.append(f"{kind} started while {self.active} were running")
            self.active[kind] += 1

    def leave(self, kind: str) -> None:
        with self.lock:
            self.active[kind] -= 1

    def applied_keys(self) -> set[Any]:
        with self.lock:
            return {key for batch in self.batches for key in batch}


class FakeWriter:
    """A lane's writer that checks the fence first, as the real one does in its transaction."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def apply(self, batch: Batch, fence: Callable[[Any], None]) -> BatchResult:
        self.recorder.enter("batch")
        try:
            fence(None)
            if self.recorder.batch_delay:
                time.sleep(self.recorder.batch_delay)
            with self.recorder.lock:
                self.recorder.batches.append(batch.keys)
            return BatchResult()
        finally:
            self.recorder.leave("batch")

    def reconcile(self, source: str, fence: Callable[[Any], None]) -> ReconcileReport:
        self.recorder.enter("reconcile")
        try:
            fence(None)
            self.recorder.reconcile_gate.wait(10)
            with self.recorder.lock:
                self.recorder.reconciles.append(source)
            return ReconcileReport(dry_run=False, production="p", sandbox="s", fields=("f",))
        finally:
            self.recorder.leave("reconcile")

    def connected(self) -> bool:
        return True

    def cancel(self) -> None:
        return None

    def reset(self) -> None:
        return None


def run_beside(daemon: Daemon, scenario: Callable[[Daemon], Awaitable[None]]) -> int:
    """Run the daemon and ``scenario`` beside it; stop the daemon after; its exit code."""

    async def main() -> int:
        running = asyncio.create_task(daemon.run())
        try:
            await eventually(daemon.started.is_set, "the daemon to start")
            await scenario(daemon)
        finally:
            daemon.request_stop()
        return await asyncio.wait_for(running, timeout=10)

    return asyncio.run(main())


def build_daemon(
    settings: Settings | None = None,
    *,
    capture: FakeCapture | None = None,
    lock: FakeLock | None = None,
    recorder: Recorder | None = None,
) -> tuple[Daemon, FakeCapture, FakeLock, Recorder]:
    """A daemon on fakes (no HTTP, no signals) and the fakes it was given."""
    settings = settings or fast_settings()
    capture = capture or FakeCapture()
    lock = lock or FakeLock()
    recorder = recorder or Recorder()
    daemon = Daemon(
        settings,
        metrics=Metrics(),
        instance_id="unit",
        handle_signals=False,
        serve_http=False,
        capture_factory=lambda _s, _i: capture,
        lock_factory=lambda _s, _i: lock,
        writer_factory=lambda _s, _h: FakeWriter(recorder),
        history=History(settings),
    )
    return daemon, capture, lock, recorder
