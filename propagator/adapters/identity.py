"""What a sandbox table is, physically: how a refresh of the sandbox is noticed.

People restore sandboxes from snapshots, truncate and reload tables, drop and
recreate whole databases. None of that sends a notification, so the daemon
reads the table's identity now and then and compares: a new database or table
oid, or a new filenode, means the table was replaced, truncated or rewritten;
a jump of the deleted-rows counter means it was emptied and reloaded in place.
Updates, the only statement propagator runs on the table, change none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg

from propagator.adapters.connections import Connection, translate_error
from propagator.core.identifiers import QualifiedName
from propagator.sql import load_sql

__all__ = ["MIN_RELOAD_ROWS", "TableIdentity", "read_identity", "refresh_between"]

MIN_RELOAD_ROWS: Final = 1000
"""Deleting fewer rows than this between two readings is never taken for a reload."""


@dataclass(frozen=True, slots=True)
class TableIdentity:
    """One reading: which table, in which database, in which file, and its row counters."""

    database_oid: int
    table_oid: int
    filenode: int | None  # None: no storage of its own (a view, a partitioned table)
    live_rows: int
    inserted_rows: int
    deleted_rows: int

    @property
    def physical(self) -> tuple[int, int, int | None]:
        return (self.database_oid, self.table_oid, self.filenode)


def read_identity(conn: Connection, name: QualifiedName) -> TableIdentity | None:
    """The table's identity now; None while it does not exist (dropped, not yet restored)."""
    try:
        row = conn.execute(
            load_sql("catalog/table_identity.sql"), {"name": name.name, "schema": name.schema}
        ).fetchone()
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", f"reading the identity of {name}") from None
    if row is None:
        return None
    database_oid, table_oid, filenode, live_rows, inserted_rows, deleted_rows = row
    return TableIdentity(
        int(database_oid),
        int(table_oid),
        None if filenode is None else int(filenode),
        int(live_rows),
        int(inserted_rows),
        int(deleted_rows),
    )


def refresh_between(
    before: TableIdentity, after: TableIdentity, *, loading: bool = False
) -> str | None:
    """Why ``after`` is a refreshed table compared with ``before``; None when it is the same.

    Counters that went down were reset (``pg_stat_reset``), which is no refresh.
    Mass deletions count only on a table that held many rows: a small table's
    ordinary deletes never look like a reload. ``loading``: a refresh was seen
    lately, so rows arriving in bulk are the rest of it (a restore creates the
    table first and copies its rows in later), and call for another reconcile.
    """
    if after.database_oid != before.database_oid:
        return "sandbox database recreated"
    if after.table_oid != before.table_oid:
        return "sandbox table recreated"
    if after.filenode != before.filenode:
        return "sandbox table truncated or rewritten"
    deleted = after.deleted_rows - before.deleted_rows
    if before.live_rows >= MIN_RELOAD_ROWS and deleted >= max(
        MIN_RELOAD_ROWS, before.live_rows // 2
    ):
        return f"sandbox table reloaded ({deleted} rows deleted)"
    inserted = after.inserted_rows - before.inserted_rows
    if loading and inserted >= max(1, before.live_rows // 2):
        return f"sandbox table loaded after a refresh ({inserted} rows inserted)"
    return None
