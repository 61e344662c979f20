"""The logical replication slot: read its state, create it, drop it (synchronous psycopg).

The SQL lives in ``sql/logical/`` (``slot_state.sql``, ``create_slot.sql``,
``drop_slot.sql``), shared with the daemon. A slot belongs to the whole server,
not to a database: its name must be unique across every database on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg

from propagator.adapters.connections import Connection, translate_error
from propagator.errors import TransientError
from propagator.sql import load_sql

__all__ = ["PLUGIN", "SlotState", "create_slot", "drop_slot", "read_slot_state"]

PLUGIN: Final = "pgoutput"
"""The output plugin propagator's slot decodes with (built into PostgreSQL 10 and later)."""


@dataclass(frozen=True, slots=True)
class SlotState:
    """One row of ``pg_replication_slots`` (``sql/logical/slot_state.sql``, in its order)."""

    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    retained_bytes: int | None

    @property
    def lost(self) -> bool:
        """The WAL the slot needed is gone: it can never be read again, only recreated."""
        return self.wal_status == "lost"

    def belongs_to(self, database: str) -> bool:
        """A pgoutput logical slot of ``database``: one propagator may use (and drop)."""
        return self.slot_type == "logical" and self.plugin == PLUGIN and self.database == database


def read_slot_state(conn: Connection, slot: str) -> SlotState | None:
    """The slot's state, or None when no slot has that name on the server."""
    try:
        with conn.transaction():
            row = conn.execute(load_sql("logical/slot_state.sql"), {"slot": slot}).fetchone()
    except psycopg.Error as error:
        raise translate_error(error, "production", f"reading replication slot {slot!r}") from None
    if row is None:
        return None
    return SlotState(
        name=str(row[0]),
        plugin=None if row[1] is None else str(row[1]),
        slot_type=str(row[2]),
        database=None if row[3] is None else str(row[3]),
        active=bool(row[4]),
        active_pid=None if row[5] is None else int(row[5]),
        wal_status=None if row[6] is None else str(row[6]),
        restart_lsn=None if row[7] is None else str(row[7]),
        confirmed_flush_lsn=None if row[8] is None else str(row[8]),
        retained_bytes=None if row[9] is None else int(row[9]),
    )


def create_slot(conn: Connection, slot: str) -> str:
    """Create the pgoutput slot and return its starting LSN; ``conn`` must be in autocommit.

    The server waits for the transactions running now to end first, at most the
    session's ``statement_timeout``: a long one open on production is worth
    waiting out, so it is a transient error, not a refusal.
    """
    try:
        row = conn.execute(load_sql("logical/create_slot.sql"), {"slot": slot}).fetchone()
    except psycopg.errors.QueryCanceled:
        raise TransientError(
            f"creating replication slot {slot!r} waited for the transactions running on "
            "production to end until statement_timeout; try again once the long one ends"
        ) from None
    except psycopg.Error as error:
        raise translate_error(error, "production", f"creating replication slot {slot!r}") from None
    assert row is not None
    return str(row[0])


def drop_slot(conn: Connection, slot: str) -> None:
    """Drop the slot; the server refuses while a session reads it."""
    try:
        conn.execute(load_sql("logical/drop_slot.sql"), {"slot": slot})
    except psycopg.Error as error:
        raise translate_error(error, "production", f"dropping replication slot {slot!r}") from None
