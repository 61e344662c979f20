"""Noticing a refreshed sandbox: the table replaced, truncated or reloaded, the database recreated.

A refresh sends no notification and leaves every row the daemon did not touch
as the snapshot had it, stale until the next periodic reconcile. The watcher
reads the table's identity every heartbeat (and at once when a write went
wrong, or before a catch-up) on a connection of its own, and asks for a full
reconcile with source ``refresh`` when the identity changed since its last
reading. The first reading is only a baseline: nothing is compared with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

import psycopg

from propagator.adapters.connections import Connection, open_connection
from propagator.adapters.identity import TableIdentity, read_identity, refresh_between
from propagator.daemon.shared import usable
from propagator.errors import PropagatorError
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.settings import Settings

__all__ = ["RefreshWatcher"]

_log = get_logger("propagator.daemon")
_LOADING_READINGS = 12
"""After a refresh, this many readings still take rows arriving in bulk for its load."""


class RefreshWatcher:
    """Compares the sandbox table's identity with the last reading; a change is a refresh."""

    def __init__(
        self,
        settings: Settings,
        metrics: MappingMetrics,
        *,
        is_leader: Callable[[], bool],
        want_refresh: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.interval = settings.heartbeat_interval.total_seconds()
        self._is_leader = is_leader
        self._want_refresh = want_refresh
        self._conn: Connection | None = None
        self._last: TableIdentity | None = None
        self._loading = 0  # readings left in which bulk inserts belong to the last refresh
        self._turn = asyncio.Lock()  # one reading at a time: the loop's or an urgent one
        self._poke = asyncio.Event()

    @property
    def watching(self) -> bool:
        """Whether a first reading was taken: refreshes from now on are noticed."""
        return self._last is not None

    def check_soon(self) -> None:
        """Something looked odd (a failed write): read the identity now, not at the heartbeat."""
        self._poke.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self._poke.clear()
                await self.check()
                await self._wait(stop)
        finally:
            await asyncio.to_thread(self.close)

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the next heartbeat, an urgent check, or the stop."""
        waits = {asyncio.ensure_future(self._poke.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def check(self) -> bool:
        """Read the identity now; whether a refresh was found (and a reconcile asked for)."""
        async with self._turn:
            try:
                identity = await asyncio.to_thread(self._read)
            except PropagatorError as error:
                _log.debug("sandbox_identity_unavailable", error=str(error))
                return False
            if identity is None:  # dropped and not restored yet: compare when it is back
                return False
            before, self._last = self._last, identity
            loading, self._loading = self._loading > 0, max(0, self._loading - 1)
            why = None if before is None else refresh_between(before, identity, loading=loading)
            if why is None:
                return False
            if not self._is_leader():
                # Not ours to repair now (the sandbox was down, the lock lost): a new
                # table stays unseen until this process leads, and is a refresh then.
                assert before is not None
                self._last = replace(
                    identity,
                    database_oid=before.database_oid,
                    table_oid=before.table_oid,
                    filenode=before.filenode,
                )
                return False
            self._loading = _LOADING_READINGS
            self.metrics.record_sandbox_refresh()
            table = str(self.settings.sandbox_table_name)
            _log.warning("sandbox_refreshed", reason=why, table=table)
            self._want_refresh(why)
            return True

    def _read(self) -> TableIdentity | None:
        """One reading; a kept connection the server ended is replaced, not reported."""
        conn = self._conn
        if conn is None or not usable(conn, 0.0):
            self.close()
            self._conn = conn = open_connection(
                self.settings, "sandbox", "refresh watcher", autocommit=True
            )
        try:
            return read_identity(conn, self.settings.sandbox_table_name)
        except PropagatorError:
            self.close()  # reopened at the next reading: the server may have restarted
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
