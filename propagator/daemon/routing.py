"""Where captured notifications go: to every mapping of the table whose channel they came on.

One capture source serves one production database; each watched table has its
own channel. With one channel (the usual case) everything goes to its mappings
without looking at each notification.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from propagator.core.payload import Heartbeat
from propagator.daemon.capture import Captured, CaptureLoop, CaptureSource
from propagator.daemon.logical import LogicalCapture
from propagator.daemon.pipeline import Pipeline
from propagator.daemon.retry import Retrier
from propagator.daemon.runtime import MappingRuntime
from propagator.observability.mapping_metrics import CaptureMetrics
from propagator.settings import Settings

__all__ = ["Router", "build_captures"]

Capture = tuple[CaptureSource, CaptureLoop, tuple[MappingRuntime, ...]]


class Router:
    """Hands each batch of notifications to the pipelines of the channel each was heard on."""

    def __init__(self, routes: Mapping[str, Sequence[Pipeline]]) -> None:
        self.routes = {channel: tuple(pipelines) for channel, pipelines in routes.items()}
        self.pipelines = tuple(dict.fromkeys(p for ps in self.routes.values() for p in ps))
        self._only = next(iter(self.routes.values())) if len(self.routes) == 1 else None

    def dispatch(self, items: Captured) -> None:
        if self._only is not None:
            for pipeline in self._only:
                pipeline.on_captured(items)
            return
        by_channel: dict[str, list[object]] = {}
        for item in items:
            if isinstance(item, Heartbeat):
                continue  # another replica's heartbeat needs nothing
            by_channel.setdefault(item.channel, []).append(item)
        for channel, heard in by_channel.items():
            for pipeline in self.routes.get(channel, ()):
                pipeline.on_captured(heard)  # type: ignore[arg-type]

    def on_connected(self, missed: str | None) -> None:
        for pipeline in self.pipelines:
            pipeline.on_capture_connected(missed)


def build_captures(
    runtimes: Sequence[MappingRuntime],
    open_source: Callable[[Sequence[Settings]], CaptureSource],
    *,
    sleep: Callable[[float], Awaitable[None]],
    stopping: Callable[[], bool],
) -> list[Capture]:
    """One capture source per production database, its loop routing to the mappings there."""
    by_database: dict[str, list[MappingRuntime]] = {}
    for runtime in runtimes:
        by_database.setdefault(runtime.settings.production_url(), []).append(runtime)
    captures: list[Capture] = []
    for group in by_database.values():
        source = open_source([r.settings for r in group])
        routes: dict[str, list[Pipeline]] = {}
        for runtime in group:
            routes.setdefault(runtime.settings.channel, []).append(runtime.pipeline)
            runtime.pipeline.capture_connected = _connected_of(source)
        router = Router(routes)
        metrics = CaptureMetrics([r.metrics for r in group])
        if isinstance(source, LogicalCapture):
            _follow(source, group, metrics)
        report = _errors_to(group)
        loop = CaptureLoop(
            source,
            channel=", ".join(routes),
            metrics=metrics,
            retrier=Retrier(
                group[0].settings, metrics, sleep=sleep, stopping=stopping, on_error=report
            ),
            stopping=stopping,
            on_connected=router.on_connected,
            on_captured=router.dispatch,
            on_lost=report,
        )
        captures.append((source, loop, tuple(group)))
    return captures


class _Progress:
    """How far the mappings fed by one slot have got (``daemon.logical.CaptureProgress``)."""

    def __init__(self, runtimes: Sequence[MappingRuntime]) -> None:
        self.pipelines = [runtime.pipeline for runtime in runtimes]
        self.clock = self.pipelines[0].buffer.clock

    def all_leading(self) -> bool:
        return all(pipeline.leadership.is_leader for pipeline in self.pipelines)

    def unsettled_since(self) -> float | None:
        times = [pipeline.unsettled_since() for pipeline in self.pipelines]
        return min((t for t in times if t is not None), default=None)

    def generation(self) -> int:
        return sum(pipeline.generation for pipeline in self.pipelines)

    def backlog(self) -> int:
        return max(len(pipeline.buffer) for pipeline in self.pipelines)


def _follow(
    source: LogicalCapture, runtimes: Sequence[MappingRuntime], metrics: CaptureMetrics
) -> None:
    """A slot keeps every change: its pipelines owe no catch-up on takeover, and it moves
    only as far as they have written."""
    for runtime in runtimes:
        runtime.pipeline.durable_capture = True
    source.follow(_Progress(runtimes))
    source.on_slot = metrics.set_slot_retained
    source.on_recreated = metrics.record_slot_recreated


def _connected_of(source: CaptureSource) -> Callable[[], bool]:
    return lambda: source.connected


def _errors_to(runtimes: Sequence[MappingRuntime]) -> Callable[[str], None]:
    """An error of a shared part, reported by every mapping it serves."""

    def report(message: str) -> None:
        for runtime in runtimes:
            runtime.error(message)

    return report
