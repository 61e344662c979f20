"""The demo's live phase: production changes at a steady rate, watched until visible."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from propagator.demo.changes import ChangeStream, Propagation
from propagator.demo.events import ChangeMade, ChangeVisible, DemoEvent, LatencyFigures

__all__ = ["LiveRun"]


@dataclass
class LiveRun:
    """The live phase: changes at a steady rate, one bulk statement, until time or a stop.

    ``run`` is a single-threaded loop (write, poll, report) so the order of
    events on screen is the order in which they happened.
    """

    stream: ChangeStream
    propagation: Propagation
    duration: float
    rate: float
    on_event: Callable[[DemoEvent], None]
    on_tick: Callable[[], None] = lambda: None
    poll_interval: float = 0.01
    settle_timeout: float = 30.0
    started_at: float = 0.0
    singles: int = 0
    bulk_rows: int = 0
    bulk_mirrored: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"single": [], "bulk": []})
    recent: deque[ChangeVisible] = field(default_factory=lambda: deque(maxlen=12))
    unsettled: int = 0
    stopped_early: bool = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at if self.started_at else 0.0

    @property
    def visible(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def figures(self, kind: str | None = None) -> LatencyFigures:
        if kind is None:
            return LatencyFigures.of(v for values in self.latencies.values() for v in values)
        return LatencyFigures.of(self.latencies[kind])

    def _emit(self, event: DemoEvent) -> None:
        if isinstance(event, ChangeVisible):
            self.latencies[event.kind].append(event.latency)
            self.recent.append(event)
        self.on_event(event)

    def _poll(self) -> None:
        for event in self.propagation.poll():
            self._emit(event)

    def run(self, stop_requested: Callable[[], bool]) -> None:
        """Write and watch for ``duration`` seconds (or until a stop), then let it settle."""
        self.started_at = time.perf_counter()
        interval = 1.0 / self.rate if self.rate > 0 else math.inf
        next_single = self.started_at + min(0.2, interval)
        bulk_at = self.started_at + self.duration * 0.4
        bulk_done = False
        end = self.started_at + self.duration
        while True:
            now = time.perf_counter()
            if stop_requested():
                self.stopped_early = now < end
                break
            if now >= end:
                break
            if not bulk_done and now >= bulk_at:
                self._bulk()
                bulk_done = True
            elif now >= next_single:
                self._single()
                next_single += interval
                if next_single < now:  # fell behind (a slow machine): keep the rate, skip ahead
                    next_single = now + interval
            self._poll()
            self.on_tick()
            time.sleep(self.poll_interval)
        self._settle(stop_requested)

    def _single(self) -> None:
        key, old, new = self.stream.single(self.propagation.pending)
        committed_at = time.perf_counter()
        self.singles += 1
        self.propagation.expect(key, old, new, committed_at, "single")
        statement = f"UPDATE jobs SET fab_order = {new} WHERE (job, release) = {key}"
        self._emit(ChangeMade("single", statement, 1, 1, committed_at, key, old, new))

    def _bulk(self) -> None:
        changed = self.stream.bulk()
        committed_at = time.perf_counter()
        mirrored = [(k, o, n) for k, o, n in changed if k in self.stream.mirrored]
        self.bulk_rows, self.bulk_mirrored = len(changed), len(mirrored)
        for key, old, new in mirrored:
            self.propagation.expect(key, old, new, committed_at, "bulk")
        event = ChangeMade(
            "bulk", self.stream.bulk_statement, len(changed), len(mirrored), committed_at
        )
        self._emit(event)

    def _settle(self, stop_requested: Callable[[], bool]) -> None:
        """No more writes: wait (bounded) until everything written is visible."""
        deadline = time.perf_counter() + self.settle_timeout
        while self.propagation.pending and time.perf_counter() < deadline:
            self._poll()
            self.on_tick()
            time.sleep(self.poll_interval)
        self.unsettled = len(self.propagation.pending)
