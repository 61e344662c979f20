"""The streaming replication protocol, on psycopg's low-level connection.

psycopg 3 offers no replication API, but its ``pq`` layer gives what the
protocol needs: a ``replication=database`` connection, ``START_REPLICATION``
sent as a simple query, then COPY BOTH messages read and written as they come.
The server pushes each committed change once, as it is decoded, and learns
from our status updates how far it may let the slot go. (Polling the slot with
``pg_logical_slot_peek_binary_changes`` instead would decode the same WAL again
on every poll and write two LOG lines to production's log each time.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq

from propagator.adapters.slot_reader import SlotTarget
from propagator.core.redact import mask_url, redact
from propagator.errors import DatabaseUnavailableError, PermanentError, TransientError

__all__ = ["Keepalive", "SlotStream", "StreamGoneError", "WalData"]

_POSTGRES_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds
_WAL_DATA = struct.Struct("!cqqq")  # 'w', start, end of WAL sent, send time
_KEEPALIVE = struct.Struct("!cqqB")  # 'k', end of WAL, send time, reply requested
_STATUS = struct.Struct("!cqqqqB")  # 'r', written, flushed, applied, send time, reply requested
_WAL_DATA_TAG, _KEEPALIVE_TAG = ord("w"), ord("k")
_SLOT_GONE_STATES = {"42704", "55000"}  # no such slot; slot invalidated


class StreamGoneError(TransientError):
    """The slot cannot be streamed: missing or invalidated (create it again, then reconcile)."""


@dataclass(frozen=True, slots=True)
class WalData:
    """One pgoutput message (a begin, relation, row change or commit)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The server's heartbeat: everything up to ``wal_end`` was sent."""

    wal_end: int
    reply_requested: bool


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SlotStream:
    """One replication connection streaming one slot through one publication."""

    def __init__(self, target: SlotTarget, *, application_name: str) -> None:
        self.target = target
        self.application_name = application_name
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def open(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self._conn is not None and self.open else None

    def _pgconn(self) -> pq.abc.PGconn:
        if self._conn is None or self._conn.closed:
            raise TransientError("production replication stream is closed")
        return self._conn.pgconn

    async def start(self) -> None:
        """Connect and ask for the slot's changes from where it was last let go."""
        await self.close()
        seconds = max(1, math.ceil(self.target.connect_timeout.total_seconds()))
        try:
            self._conn = await asyncio.to_thread(
                psycopg.connect,
                self.target.url,
                autocommit=True,
                replication="database",
                connect_timeout=seconds,
                application_name=self.application_name,
                client_encoding="UTF8",  # pgoutput sends text in the client encoding
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except psycopg.Error as error:
            reason = redact(str(error).strip().splitlines()[-1] if str(error).strip() else "")
            if "replication" in reason and ("permission" in reason or "must be" in reason):
                raise PermanentError(
                    f"production role may not stream the slot ({reason}): "
                    "ALTER ROLE ... REPLICATION"
                ) from None
            raise DatabaseUnavailableError(
                f"cannot open a replication connection to {mask_url(self.target.url)}: {reason}",
                "production",
            ) from None
        pgconn = self._pgconn()
        pgconn.nonblocking = 1
        options = f"proto_version '1', publication_names '{_quoted(self.target.publication)}'"
        command = f'START_REPLICATION SLOT "{self.target.slot}" LOGICAL 0/0 ({options})'
        pgconn.send_query(command.encode())
        await self._flush()
        while True:
            self._consume()
            if not pgconn.is_busy():
                break
            await self._readable(self.target.connect_timeout.total_seconds())
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise self._refused(result)

    def _refused(self, result: pq.abc.PGresult | None) -> Exception:
        message = "no answer" if result is None else result.error_message.decode(errors="replace")
        sqlstate = b"" if result is None else result.error_field(pq.DiagnosticField.SQLSTATE)
        state = (sqlstate or b"").decode()
        text = redact(message.strip().splitlines()[0] if message.strip() else message)
        if state in _SLOT_GONE_STATES and "slot" in text:
            return StreamGoneError(f"production replication slot {self.target.slot!r}: {text}")
        if state == "55006":
            return TransientError(
                f"production replication slot {self.target.slot!r} is in use: {text}"
            )
        if state in {"42501", "28000"}:
            return PermanentError(f"production role may not stream the slot: {text}")
        if state == "42704":
            return PermanentError(f"production publication {self.target.publication!r}: {text}")
        return TransientError(f"production replication stream refused: {text}")

    def _consume(self) -> None:
        try:
            self._pgconn().consume_input()
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(
                f"production replication stream lost: {redact(str(error).strip())}", "production"
            ) from None

    async def _readable(self, timeout: float) -> bool:
        """Wait until the socket has something to read, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self._pgconn().socket
        loop.add_reader(fd, ready.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), timeout=max(0.0, timeout))
            return ready.is_set()
        finally:
            loop.remove_reader(fd)

    async def _flush(self) -> None:
        pgconn = self._pgconn()
        deadline = time.monotonic() + self.target.connect_timeout.total_seconds()
        while pgconn.flush() == 1:  # the socket's buffer is full: wait a moment
            if time.monotonic() > deadline:
                raise DatabaseUnavailableError(
                    "production replication stream stalled", "production"
                )
            await asyncio.sleep(0.005)

    async def receive(
        self, timeout: float, limit: int, gather: float = 0.0
    ) -> list[WalData | Keepalive]:
        """What arrived, waiting at most ``timeout`` seconds for the first message, then
        ``gather`` seconds more for what follows it (a commit at a time costs a wake-up each)."""
        messages = self._available(limit)
        if not messages and timeout > 0 and await self._readable(timeout):
            if gather > 0:
                await asyncio.sleep(gather)
            messages = self._available(limit)
        return messages

    def _available(self, limit: int) -> list[WalData | Keepalive]:
        self._consume()
        pgconn = self._pgconn()
        messages: list[WalData | Keepalive] = []
        while len(messages) < limit:
            size, data = pgconn.get_copy_data(1)
            if size == 0:  # the buffer is empty: whatever the socket holds meanwhile, too
                self._consume()
                size, data = pgconn.get_copy_data(1)
                if size == 0:
                    break
            if size < 0:
                result = pgconn.get_result()
                raise (
                    self._refused(result)
                    if result is not None
                    else DatabaseUnavailableError(
                        "production replication stream ended", "production"
                    )
                )
            kind = data[0]
            if kind == _WAL_DATA_TAG:
                messages.append(WalData(bytes(data[_WAL_DATA.size :])))
            elif kind == _KEEPALIVE_TAG:
                _, wal_end, _, reply = _KEEPALIVE.unpack_from(data)
                messages.append(Keepalive(wal_end, bool(reply)))
        return messages

    async def confirm(self, flushed: int, *, reply_requested: bool = False) -> None:
        """Tell the server every change before ``flushed`` is safe: the slot may let it go."""
        now = int((time.time() - _POSTGRES_EPOCH) * 1_000_000)
        status = _STATUS.pack(b"r", flushed, flushed, flushed, now, 1 if reply_requested else 0)
        try:
            self._pgconn().put_copy_data(status)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(
                f"production replication stream lost: {redact(str(error).strip())}", "production"
            ) from None
        await self._flush()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await asyncio.to_thread(conn.close)
