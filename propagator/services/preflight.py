"""Refusing settings that do not fit the databases, before anything is read in full or written.

``preflight`` runs while a sync is prepared (``SyncContext.prepare``, which the
CLI, the daemon's writers and ``run_reconcile`` all use): the production filter
must be an expression the server accepts on the production table, and the key
columns must identify one row on each side, proved by a unique index or, where
none covers them, by a bounded query that finds no duplicate key. Non-unique
keys raise ``NonUniqueKeyError``: exit 2 for a command, a permanent error the
daemon reports and retries slowly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from propagator.adapters.connections import Connection
from propagator.adapters.tables import TableInfo
from propagator.adapters.uniqueness import check_filter, find_duplicate, key_catalog
from propagator.core.mapping import Key
from propagator.core.uniqueness import KeyProof, covering_index, non_unique_message
from propagator.errors import NonUniqueKeyError
from propagator.services.both_sides import on_both

__all__ = ["KeyProof", "non_unique_error", "preflight", "prove_unique", "require_unique_rows"]


def preflight(
    production_conn: Connection,
    sandbox_conn: Connection,
    production: TableInfo,
    sandbox: TableInfo,
    key_columns: Sequence[str],
    production_filter: str | None,
) -> tuple[KeyProof, KeyProof]:
    """Check the filter, then prove the key columns unique on both sides (both at once;
    production's refusal first)."""

    def production_side() -> KeyProof:
        if production_filter:
            check_filter(production_conn, production, production_filter)
        return prove_unique(production_conn, production, key_columns, production_filter)

    return on_both(production_side, lambda: prove_unique(sandbox_conn, sandbox, key_columns))


def prove_unique(
    conn: Connection, table: TableInfo, key_columns: Sequence[str], where: str | None = None
) -> KeyProof:
    """How ``key_columns`` are unique in ``table``; ``NonUniqueKeyError`` naming a duplicate if not.

    A unique index on key columns proves it from the catalog; otherwise one
    grouped query (rows ``where`` selects, under the statement timeout) looks
    for a duplicate key.
    """
    catalog = key_catalog(conn, table, key_columns)
    index = covering_index(key_columns, catalog.indexes)
    if index is not None:
        return KeyProof(table.side, index.describe(), catalog.nullable)
    duplicate = find_duplicate(conn, table, key_columns, where)
    if duplicate is not None:
        raise non_unique_error(table, key_columns, duplicate)
    return KeyProof(table.side, "no unique index, no duplicate key found")


def non_unique_error(table: TableInfo, key_columns: Sequence[str], key: Key) -> NonUniqueKeyError:
    """The refusal of ``key``, held by two rows of ``table``."""
    where = f"the {table.side} table {table.name}"
    return NonUniqueKeyError(non_unique_message(where, key_columns, key))


def require_unique_rows(
    rows: Iterable[Sequence[Any]], width: int, table: TableInfo, key_columns: Sequence[str]
) -> None:
    """Refuse rows read by key when two share a key (the keys became non-unique)."""
    seen: set[Key] = set()
    for row in rows:
        key = tuple(row[:width])
        if key in seen:
            raise non_unique_error(table, key_columns, key)
        seen.add(key)
