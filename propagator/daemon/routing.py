"""Where captured notifications go: to every mapping of the table whose channel they came on.

One capture source serves one production database; each watched table has its
own channel. With one channel (the usual case) everything goes to its mappings
without looking at each notification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from propagator.core.payload import Heartbeat
from propagator.daemon.capture import Captured
from propagator.daemon.pipeline import Pipeline

__all__ = ["Router"]


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

    def on_connected(self) -> None:
        for pipeline in self.pipelines:
            pipeline.on_capture_connected()
