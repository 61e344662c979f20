"""Capture sources: where "these keys may have changed" comes from.

A capture source yields parsed notifications (changed keys, a resync request,
heartbeats, malformed payloads) from production. The NOTIFY listener
(``adapters.listener.Listener``) is the first; ``CaptureLoop`` keeps any source
connected, reconnecting with backoff, and tells the pipeline on every
(re)connect so it can catch up on what was said while nobody listened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from propagator.core.payload import MalformedNotification, Notification
from propagator.daemon.retry import Retrier, Stopping
from propagator.errors import TransientError
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import CaptureMetrics

__all__ = ["CaptureLoop", "CaptureSource", "Captured"]

_log = get_logger("propagator.daemon")
_TICK_SECONDS = 1.0

Captured = Sequence[Notification | MalformedNotification]


class CaptureSource(Protocol):
    """What the daemon needs of a source of change notifications."""

    @property
    def connected(self) -> bool: ...

    @property
    def backend_pid(self) -> int | None: ...

    @property
    def heartbeat_age(self) -> float: ...

    @property
    def queue_usage(self) -> float | None: ...

    def describe(self) -> dict[str, Any]:
        """The capture's part of ``/status``: its kind and state."""

    @property
    def missed(self) -> str | None:
        """Why changes may have been missed before this (re)connect, asking for a catch-up
        reconcile; None when the source kept every change meanwhile (a slot)."""

    async def connect(self) -> None: ...

    async def receive(self, timeout: float) -> Captured: ...

    async def keepalive(self) -> None:
        """Prove the connection alive (probe, heartbeat); raise ``TransientError`` if not."""

    async def close(self) -> None: ...


class CaptureLoop:
    """Keeps one capture source connected and hands what it captures to ``on_captured``."""

    def __init__(
        self,
        source: CaptureSource,
        *,
        channel: str,
        metrics: CaptureMetrics,
        retrier: Retrier,
        stopping: Callable[[], bool],
        on_connected: Callable[[str | None], None],
        on_captured: Callable[[Captured], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.source = source
        self.channel = channel
        self.metrics = metrics
        self.retrier = retrier
        self._stopping = stopping
        self._on_connected = on_connected
        self._on_captured = on_captured
        self._on_lost = on_lost

    async def run(self) -> None:
        connected_before = False
        while not self._stopping():
            try:
                await self._connect()
            except Stopping:
                break
            _log.info(
                "listener_reconnected" if connected_before else "listener_connected",
                channel=self.channel,
                backend_pid=self.source.backend_pid,
            )
            connected_before = True
            self._on_connected(self.source.missed)
            try:
                await self._receive_until_stopped()
            except TransientError as error:
                self.metrics.listener_connected.set(0)
                self.metrics.set_database_connected("production", False)
                self.metrics.record_retry("production_unavailable")
                self._on_lost(str(error))
                _log.warning("listener_lost", error=str(error))
        if self.source.connected:
            await self._take_last_words()
        await self.source.close()
        self.metrics.listener_connected.set(0)
        _log.info("listener_stopped")

    async def _connect(self) -> None:
        await self.retrier.run(
            "connecting the production listener",
            self.source.connect,
            on_failure=lambda _e: self.metrics.set_database_connected("production", False),
        )
        self.metrics.listener_connected.set(1)
        self.metrics.set_database_connected("production", True)

    async def _receive_until_stopped(self) -> None:
        while not self._stopping():
            received = await self.source.receive(timeout=_TICK_SECONDS)
            if received:
                self._on_captured(received)
            if not self._stopping():
                await self.source.keepalive()
                self.sample()

    async def _take_last_words(self) -> None:
        """On a stop, hand over what production already said, so it is drained before exit."""
        try:
            received = await self.source.receive(timeout=0)
        except TransientError:
            return
        if received:
            self._on_captured(received)

    def sample(self) -> None:
        """Export the source's health: heartbeat age and notification queue usage."""
        self.metrics.heartbeat_age.set(self.source.heartbeat_age)
        if self.source.queue_usage is not None:
            self.metrics.notification_queue_usage.set(self.source.queue_usage)
