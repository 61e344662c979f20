"""One writer: a PostgreSQL session advisory lock on the sandbox elects it.

The lock lives on a dedicated connection, so it frees itself the moment that
process or connection dies. Every sandbox write transaction also checks, inside
itself, that the lock is still held by that very session (``assert_lock_held``):
a leader whose lock connection silently died can never commit a batch after a
successor has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg

from propagator.adapters.listener import (
    BACKEND_START_SQL,
    AsyncConnection,
    end_orphaned_session,
    open_async_connection,
)
from propagator.adapters.postgres import translate_error
from propagator.core.identifiers import QualifiedName
from propagator.errors import DatabaseUnavailableError, PropagatorError
from propagator.sql import load_sql

T = TypeVar("T")

__all__ = ["LeaderLock", "LeadershipLostError", "assert_lock_held", "lock_id_for"]


class LeadershipLostError(PropagatorError):
    """This process no longer holds the leader lock, so it must not write."""


def lock_id_for(
    sandbox_table: QualifiedName, mapping: str = "default", base: int | None = None
) -> int:
    """A stable 64-bit lock id derived from the sandbox table's name (and a named mapping's).

    The mapping ``default`` keeps the id it always had; each named mapping has its
    own, so replicas are active/standby per mapping. ``base`` is a configured id.
    """
    if base is not None:
        if mapping == "default":
            return base
        seed = f"propagator:{base}:{mapping}"
    elif mapping == "default":
        seed = f"propagator:{sandbox_table}"
    else:
        seed = f"propagator:{mapping}:{sandbox_table}"
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def assert_lock_held(conn: psycopg.Connection[tuple[Any, ...]], lock_id: int, pid: int) -> None:
    """Inside a write transaction: fail (and so roll back) unless session ``pid`` holds the lock."""
    row = conn.execute(load_sql("leader/lock_held.sql"), {"pid": pid, "lock": lock_id}).fetchone()
    if not row or not row[0]:
        raise LeadershipLostError(
            f"the leader lock {lock_id} is no longer held by this process; not writing"
        )


class LeaderLock:
    """The session advisory lock ``lock_id`` on the sandbox, on its own connection."""

    def __init__(
        self,
        url: str,
        lock_id: int,
        *,
        connect_timeout: timedelta = timedelta(seconds=10),
        probe_timeout: timedelta = timedelta(seconds=5),
        application_name: str = "propagator leader",
    ) -> None:
        self.url = url
        self.lock_id = lock_id
        self.connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout.total_seconds()
        self.application_name = application_name
        self._conn: AsyncConnection | None = None
        self._abandoned: set[asyncio.Future[None]] = set()
        self._backend_start: Any = None
        self._orphan: tuple[int, Any] | None = None
        self.held = False
        self.backend_pid: int | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def fence(self) -> Callable[[psycopg.Connection[tuple[Any, ...]]], None]:
        """The in-transaction check that this session still holds the lock.

        Bound to the session holding it now: a lock lost and retaken meanwhile by a
        new session of ours does not make an older batch's write legitimate.
        """
        pid, lock_id = self.backend_pid, self.lock_id

        def check(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            if pid is None:
                raise LeadershipLostError("no leader lock is held by this process; not writing")
            assert_lock_held(conn, lock_id, pid)

        return check

    async def try_acquire(self) -> bool:
        """Take the lock if it is free (connecting first if needed); True when held."""
        if self.held:
            return await self.still_held()
        if not self.connected:
            self._conn = await open_async_connection(
                self.url,
                "sandbox",
                connect_timeout=self.connect_timeout,
                application_name=self.application_name,
            )
            self.backend_pid = self._conn.info.backend_pid
            self._backend_start = None
        conn = self._conn
        assert conn is not None
        orphan, self._orphan = self._orphan, None

        async def request() -> tuple[Any, ...] | None:
            if orphan is not None:
                # A session abandoned as half-open may still be alive on the server,
                # holding the lock; end it (only that exact session: pid and start time).
                await end_orphaned_session(conn, orphan)
            if self._backend_start is None:
                cursor = await conn.execute(BACKEND_START_SQL)
                found = await cursor.fetchone()
                self._backend_start = found[0] if found else None
            cursor = await conn.execute(
                "SELECT pg_catalog.pg_try_advisory_lock(%s)", (self.lock_id,)
            )
            return await cursor.fetchone()

        try:
            row = await self._within(request)
        except TimeoutError:
            raise DatabaseUnavailableError(
                "the sandbox did not answer the leader lock request in time", "sandbox"
            ) from None
        except psycopg.Error as error:
            await self._drop()
            raise translate_error(error, "sandbox", "taking the leader lock") from None
        self.held = bool(row and row[0])
        return self.held

    async def still_held(self) -> bool:
        """Probe the lock connection; a dead connection means the lock is gone."""
        if not self.held or self._conn is None or self._conn.closed:
            await self._drop()
            return False
        conn = self._conn

        async def probe() -> None:
            await conn.execute("SELECT 1")

        try:
            await self._within(probe)
        except TimeoutError:
            return False  # already abandoned: the lock is gone with its connection
        except psycopg.Error:
            await self._drop()
            return False
        return True

    async def _within(self, query: Callable[[], Awaitable[T]]) -> T:
        """Run a query on the lock connection, giving up on the connection after probe_timeout.

        Cancelling a query on a silent (half-open) connection makes psycopg wait
        seconds for the server to confirm, so a stuck query is abandoned at once
        and cancelled in the background, which also closes its connection.
        """
        task = asyncio.ensure_future(query())
        try:
            done, _ = await asyncio.wait({task}, timeout=self.probe_timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            conn, self._conn = self._conn, None
            if self.backend_pid is not None and self._backend_start is not None:
                self._orphan = (self.backend_pid, self._backend_start)
            self.held = False
            self.backend_pid = None
            cleanup = asyncio.ensure_future(_cancel_and_close(task, conn))
            self._abandoned.add(cleanup)
            cleanup.add_done_callback(self._abandoned.discard)
            raise TimeoutError
        return task.result()

    async def release(self) -> None:
        """Give the lock back and close its connection."""
        if self.held and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error, TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    await self._conn.execute(
                        "SELECT pg_catalog.pg_advisory_unlock(%s)", (self.lock_id,)
                    )
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.held = False
        self.backend_pid = None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, TimeoutError, OSError):
                await asyncio.wait_for(conn.close(), timeout=5)


async def _cancel_and_close(task: asyncio.Future[Any], conn: AsyncConnection | None) -> None:
    """Cancel a query stuck on an abandoned connection, then close that connection."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if conn is not None and not conn.closed:
        with contextlib.suppress(psycopg.Error, TimeoutError, OSError):
            await asyncio.wait_for(conn.close(), timeout=5)
