"""Tables whose key columns are not unique, the line refusing them, and proof nothing changed."""

from __future__ import annotations

from typing import Any

from tests.helpers import Database, DatabasePair

__all__ = [
    "duplicate_in_production",
    "duplicate_in_sandbox",
    "refusal",
    "snapshot",
]


def refusal(side: str, columns: str, key: str, table: str = "public.jobs") -> str:
    """The one line (after ``propagator: error: ``) that refuses non-unique keys."""
    return (
        f"key columns ({columns}) are not unique in the {side} table {table}: "
        f"duplicate key {key}; add a unique index on ({columns}) "
        "or choose key columns that identify one row"
    )


def duplicate_in_production(databases: DatabasePair) -> None:
    """Job 1 has two releases on both sides, so ``job`` alone is no key; every value differs."""
    rows = [(1, "A", 1, None, "cut"), (1, "B", 2, None, "weld"), (2, "A", 3, None, "cut")]
    databases.production.insert_jobs(rows)
    databases.sandbox.insert_jobs(
        (job, release, 0, None, stage) for job, release, _, _, stage in rows
    )


def duplicate_in_sandbox(databases: DatabasePair) -> None:
    """``job`` is unique in production but job 1 has two rows in the sandbox."""
    databases.production.insert_jobs([(1, "A", 1), (2, "A", 2)])
    databases.sandbox.insert_jobs([(1, "A", 0), (1, "B", 0), (2, "A", 0)])


def snapshot(database: Database) -> list[tuple[Any, ...]]:
    """Every row of the jobs table and every table of the database: what a write would change."""
    rows = database.fetchall("SELECT * FROM public.jobs ORDER BY id")
    tables = database.fetchall(
        "SELECT schemaname, tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
    )
    return [*rows, *tables]
