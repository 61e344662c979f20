"""The production listener: one dedicated autocommit connection that LISTENs.

It wakes at least every second (so shutdown is never blocked on the socket),
probes itself while idle, and sends itself a heartbeat through the real NOTIFY
path: a connection that stops hearing its own heartbeat is half-open, however
healthy the socket looks, and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.postgres import translate_error
from propagator.core.payload import (
    Heartbeat,
    MalformedNotification,
    Notification,
    heartbeat_payload,
    parse_notification,
)
from propagator.core.redact import mask_url, redact
from propagator.errors import DatabaseUnavailableError, Side
from propagator.sql import load_sql

__all__ = [
    "BACKEND_START_SQL",
    "HalfOpenConnectionError",
    "Listener",
    "end_orphaned_session",
    "open_async_connection",
]

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]
_PROBE = "SELECT pg_catalog.pg_notification_queue_usage()"


class HalfOpenConnectionError(DatabaseUnavailableError):
    """The listener stopped hearing its own heartbeat: the connection is presumed dead."""


async def open_async_connection(
    url: str,
    side: Side,
    *,
    connect_timeout: timedelta,
    application_name: str,
) -> AsyncConnection:
    """An autocommit asyncio connection with TCP keepalives, or ``DatabaseUnavailableError``."""
    seconds = max(1, math.ceil(connect_timeout.total_seconds()))
    try:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                url,
                autocommit=True,
                connect_timeout=seconds,
                application_name=application_name,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            ),
            timeout=seconds + 1,
        )
    except (psycopg.Error, TimeoutError, OSError) as error:
        text = str(error).strip()
        reason = redact(text.splitlines()[-1] if text else type(error).__name__)
        raise DatabaseUnavailableError(
            f"cannot connect to the {side} database at {mask_url(url)}: {reason}", side
        ) from None


BACKEND_START_SQL = (
    "SELECT backend_start FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()"
)


async def end_orphaned_session(conn: AsyncConnection, orphan: tuple[int, Any]) -> None:
    """End a session this process abandoned as half-open, if the server still has it.

    Matched by pid and start time, so a pid reused by another session is never
    touched. Failing to end it (no permission) only delays its cleanup.
    """
    with contextlib.suppress(psycopg.Error):
        await conn.execute(load_sql("catalog/end_orphaned_session.sql"), orphan)


class Listener:
    """LISTEN on ``channel`` (and ``more_channels``) and parse what arrives.

    One connection serves every watched table of a production database: each
    table has its own channel, and its key width is given per channel.
    Heartbeats travel on ``channel``.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        instance_id: str,
        key_width: int,
        more_channels: Mapping[str, int] | None = None,
        heartbeat_interval: timedelta,
        heartbeat_timeout: timedelta,
        connect_timeout: timedelta = timedelta(seconds=10),
        application_name: str = "propagator listener",
        gather: timedelta = timedelta(milliseconds=5),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.channel = channel
        self.instance_id = instance_id
        self.key_width = key_width
        self.key_widths = {channel: key_width, **(more_channels or {})}
        self.heartbeat_interval = heartbeat_interval.total_seconds()
        self.heartbeat_timeout = heartbeat_timeout.total_seconds()
        self.connect_timeout = connect_timeout
        self.application_name = application_name
        self.gather = gather.total_seconds()
        self._clock = clock
        self._conn: AsyncConnection | None = None
        self._abandoned: set[asyncio.Future[None]] = set()
        self._backend_start: Any = None
        self._orphan: tuple[int, Any] | None = None
        self._last_heartbeat_sent = 0.0
        self._last_heartbeat_seen = 0.0
        self.backend_pid: int | None = None
        self.queue_usage: float | None = None
        self.heartbeat_round_trip: float | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def describe(self) -> dict[str, Any]:
        """The capture's part of ``/status``."""
        return {"kind": "notify", "channels": list(self.key_widths)}

    @property
    def missed(self) -> str:
        """NOTIFY keeps nothing for a listener that is away: every (re)connect catches up."""
        return "listener connected"

    @property
    def heartbeat_age(self) -> float:
        """Seconds since this connection last heard its own heartbeat (or was opened)."""
        return max(0.0, self._clock() - self._last_heartbeat_seen) if self.connected else 0.0

    async def connect(self) -> None:
        """Open the connection and LISTEN; nothing committed after this can be missed."""
        await self.close()
        conn = await open_async_connection(
            self.url,
            "production",
            connect_timeout=self.connect_timeout,
            application_name=self.application_name,
        )
        orphan, self._orphan = self._orphan, None
        if orphan is not None:
            await end_orphaned_session(conn, orphan)
        try:
            for channel in self.key_widths:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            started = await (await conn.execute(BACKEND_START_SQL)).fetchone()
        except psycopg.Error as error:
            await conn.close()
            raise translate_error(error, "production", "starting to LISTEN") from None
        self._conn = conn
        self.backend_pid = conn.info.backend_pid
        self._backend_start = started[0] if started else None
        now = self._clock()
        self._last_heartbeat_seen = now
        self._last_heartbeat_sent = now - self.heartbeat_interval  # probe right away

    async def receive(self, timeout: float = 1.0) -> list[Notification | MalformedNotification]:
        """What arrives within ``timeout`` seconds, parsed; own heartbeats are consumed here.

        Returns as soon as something arrived, with everything that followed
        within ``gather`` seconds: one wake-up of the event loop per batch of
        notifications rather than per notification keeps the listener cheap
        under a stream of thousands per second. An empty list means a quiet
        ``timeout``.
        """
        conn = self._require()
        payloads: list[tuple[str, str]] = []
        try:
            async for notify in conn.notifies(timeout=timeout, stop_after=1):
                payloads.append((notify.channel, notify.payload))
            if payloads and self.gather > 0:
                await asyncio.sleep(self.gather)
                async for notify in conn.notifies(timeout=0):
                    payloads.append((notify.channel, notify.payload))
        except psycopg.Error as error:
            await self.close()
            raise translate_error(error, "production", "listening for notifications") from None
        received: list[Notification | MalformedNotification] = []
        for channel, payload in payloads:
            parsed = self._parse(channel, payload)
            if isinstance(parsed, Heartbeat) and parsed.instance_id == self.instance_id:
                self._last_heartbeat_seen = self._clock()
                self.heartbeat_round_trip = max(0.0, time.time() - parsed.sent_at)
                continue
            received.append(parsed)
        return received

    def _parse(self, channel: str, payload: str) -> Notification | MalformedNotification:
        try:
            return parse_notification(payload, self.key_widths.get(channel, 0), channel)
        except MalformedNotification as error:
            error.channel = channel
            return error

    async def keepalive(self) -> None:
        """Probe, sample the queue and send a heartbeat when due; replace a half-open link.

        Raises ``HalfOpenConnectionError`` when no heartbeat came back within
        ``heartbeat_timeout``, ``DatabaseUnavailableError`` when the probe fails.
        """
        conn = self._require()
        now = self._clock()
        if now - self._last_heartbeat_seen > self.heartbeat_timeout:
            await self.close()
            raise HalfOpenConnectionError(
                f"no heartbeat came back on the production listener for "
                f"{now - self._last_heartbeat_seen:.1f}s; reconnecting",
                "production",
            )
        if now - self._last_heartbeat_sent < self.heartbeat_interval:
            return
        self._last_heartbeat_sent = now
        probe = asyncio.ensure_future(self._probe(conn))
        try:
            done, _ = await asyncio.wait({probe}, timeout=self.heartbeat_timeout)
        except asyncio.CancelledError:
            probe.cancel()
            raise
        if not done:
            # Cancelling a query on a silent connection makes psycopg wait seconds for
            # the server to confirm; let that happen in the background, reconnect now.
            self._abandon(probe)
            raise DatabaseUnavailableError(
                f"the production listener did not answer a probe within {self.heartbeat_timeout}s",
                "production",
            )
        try:
            probe.result()
        except psycopg.Error as error:
            await self.close()
            raise translate_error(error, "production", "probing the listener") from None

    async def _probe(self, conn: AsyncConnection) -> None:
        try:
            row = await (await conn.execute(_PROBE)).fetchone()
            self.queue_usage = float(row[0]) if row and row[0] is not None else None
            await conn.execute(
                "SELECT pg_catalog.pg_notify(%s, %s)",
                (self.channel, heartbeat_payload(self.instance_id, time.time())),
            )
        except asyncio.CancelledError:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
            raise

    def _abandon(self, probe: asyncio.Future[None]) -> None:
        """Forget the current connection; the stuck probe is cancelled and closes it itself.

        The server may not know the connection is dead: its session would stay
        LISTENing without reading, which stops the server from truncating the
        NOTIFY queue. The next connection ends exactly that session.
        """
        if self.backend_pid is not None and self._backend_start is not None:
            self._orphan = (self.backend_pid, self._backend_start)
        self._conn = None
        self.backend_pid = None
        self._abandoned.add(probe)
        probe.add_done_callback(self._forget)
        probe.cancel()

    def _forget(self, probe: asyncio.Future[None]) -> None:
        self._abandoned.discard(probe)
        if not probe.cancelled():
            probe.exception()  # retrieved: an abandoned probe's failure is expected

    def _require(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed:
            raise DatabaseUnavailableError("the production listener is not connected", "production")
        return self._conn

    async def close(self) -> None:
        """Drop the connection (the server forgets the LISTEN with it)."""
        conn, self._conn = self._conn, None
        self.backend_pid = None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, TimeoutError, OSError):
                await asyncio.wait_for(conn.close(), timeout=5)
