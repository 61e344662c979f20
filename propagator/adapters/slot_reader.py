"""The logical capture's ordinary production connection: the slot and publication looked at.

The changes themselves arrive on a replication connection (``slot_stream``);
this one checks the publication, finds, creates or recreates the slot and reads
how much WAL it retains. Errors become the project's error types, with the
slot's own troubles told apart so the capture can recreate a lost slot.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import errors as pg_errors

from propagator.adapters.connections import translate_error
from propagator.adapters.listener import AsyncConnection, open_async_connection
from propagator.adapters.publication import ServerFacts, server_facts
from propagator.adapters.slots import SlotState
from propagator.errors import PermanentError, TransientError
from propagator.sql import load_sql

__all__ = ["SlotGoneError", "SlotReader", "SlotState", "SlotTarget", "format_lsn", "parse_lsn"]


class SlotGoneError(TransientError):
    """The slot is missing or invalidated: it must be created again, then a full reconcile."""


def parse_lsn(text: str) -> int:
    """``16/B374D848`` as the 64-bit WAL position it stands for."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class SlotTarget:
    """Which slot, through which publication, on which production database."""

    url: str
    slot: str
    publication: str
    connect_timeout: timedelta


class SlotReader:
    """One autocommit connection that looks at, creates and recreates one slot."""

    def __init__(self, target: SlotTarget, *, application_name: str) -> None:
        self.target = target
        self.application_name = application_name
        self._conn: AsyncConnection | None = None

    @property
    def slot(self) -> str:
        return self.target.slot

    @property
    def publication(self) -> str:
        return self.target.publication

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self.connected and self._conn else None

    async def connect(self) -> None:
        await self.close()
        conn = await open_async_connection(
            self.target.url,
            "production",
            connect_timeout=self.target.connect_timeout,
            application_name=self.application_name,
        )
        # pgoutput sends names and text values in the client encoding: always read UTF-8.
        await conn.execute("SELECT pg_catalog.set_config('client_encoding', 'UTF8', false)")
        self._conn = conn

    def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed:
            raise TransientError("production slot connection is closed")
        return self._conn

    async def _rows(
        self, what: str, query: str, params: dict[str, object]
    ) -> list[tuple[object, ...]]:
        try:
            cursor = await self._connection().execute(query, params)
            return await cursor.fetchall()
        except psycopg.Error as error:
            raise self._translated(error, what) from None

    def _translated(self, error: psycopg.Error, what: str) -> Exception:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, pg_errors.UndefinedObject) and "replication slot" in text:
            return SlotGoneError(f"production replication slot {self.slot!r} is missing")
        if isinstance(error, pg_errors.ObjectNotInPrerequisiteState) and "slot" in text:
            return SlotGoneError(f"production replication slot {self.slot!r} is unusable: {text}")
        if isinstance(error, pg_errors.UndefinedObject) and "publication" in text:
            return PermanentError(
                f"production publication {self.publication!r} is missing: "
                "run propagator capture install"
            )
        if isinstance(error, pg_errors.InsufficientPrivilege):
            return PermanentError(
                f"production role may not read replication slots ({text}): "
                "ALTER ROLE ... REPLICATION"
            )
        if isinstance(error, pg_errors.ObjectInUse):
            return TransientError(f"production replication slot {self.slot!r} is in use: {text}")
        return translate_error(error, "production", what)

    async def server_facts(self) -> ServerFacts:
        """The server's settings and the role's attributes logical capture depends on."""
        rows = await self._rows(
            "reading the server settings", load_sql("logical/server_facts.sql"), {}
        )
        return server_facts(rows[0])

    async def state(self) -> SlotState | None:
        rows = await self._rows(
            "reading the replication slot", load_sql("logical/slot_state.sql"), {"slot": self.slot}
        )
        return SlotState(*rows[0]) if rows else None  # type: ignore[arg-type]

    async def ever_read(self, server_version_num: int) -> bool:
        """Whether the slot ever sent a transaction to a reader (PostgreSQL 13: assumed so)."""
        if server_version_num < 140000:
            return True  # no pg_stat_replication_slots before 14
        rows = await self._rows(
            "reading the slot's statistics",
            load_sql("logical/slot_ever_read.sql"),
            {"slot": self.slot},
        )
        return bool(rows and rows[0][0])

    async def visible(self, xids: list[int]) -> bool:
        """Whether these committed transactions are visible to a read of production now."""
        rows = await self._rows(
            "checking the changes are visible", load_sql("logical/xids_visible.sql"), {"xids": xids}
        )
        return bool(rows[0][0])

    async def create(self) -> int:
        rows = await self._rows(
            "creating the replication slot",
            load_sql("logical/create_slot.sql"),
            {"slot": self.slot},
        )
        return parse_lsn(str(rows[0][0]))

    async def drop(self) -> None:
        await self._rows(
            "dropping the lost replication slot",
            "SELECT pg_catalog.pg_drop_replication_slot(%(slot)s)",
            {"slot": self.slot},
        )

    async def published_tables(self) -> list[tuple[str, str]] | None:
        """The publication's tables as (schema, name); None when it does not exist."""
        rows = await self._rows(
            "reading the publication",
            load_sql("logical/reader_tables.sql"),
            {"publication": self.publication},
        )
        if not rows:
            return None
        return [(str(schema), str(name)) for _, schema, name in rows if name is not None]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
