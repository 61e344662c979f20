"""Writing the sandbox: one set-based UPDATE per batch, refused rows isolated by bisection.

Sandbox users come first: a row someone holds is skipped (``SKIP LOCKED``) and
any other lock is waited for at most ``lock_timeout``; either way the rows are
handed back as busy, for the caller to retry later, never failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.parameters import (
    cast_column,
    encode_rows,
    key_match,
    with_parameters,
)
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.adapters.transactions import pipelined_transaction
from propagator.core.mapping import Key
from propagator.core.plan import RowFailure
from propagator.core.redact import redact

__all__ = ["ApplyOutcome", "apply_values"]

_ROW_SQLSTATE_CLASSES = ("22", "23")  # data exceptions, integrity violations: blame the row
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired: someone holds the table
_MILLISECOND = timedelta(milliseconds=1)
_SET_LOCK_TIMEOUT = "SELECT pg_catalog.set_config('lock_timeout', %s, true)"


@dataclass(slots=True)
class ApplyOutcome:
    """What a set-based apply really changed, the rows the sandbox refused, and the rows
    another session held (``busy``: not written, not failed, to retry later)."""

    updated: list[Key]
    failures: list[RowFailure]
    busy: list[Key] = field(default_factory=list)  # held by someone else: retry later


def _update_statement(
    table: TableInfo, key_columns: Sequence[str], fields: Sequence[str], *, skip_locked: bool
) -> sql.Composed:
    """Lock the rows to write (or, with ``skip_locked``, those free), update those that differ.

    Returns ``(n, written)`` per row locked, ``n`` being the row's 1-based
    position in the parameter. With ``skip_locked`` a row sent but not returned
    is held by someone else (or gone), and is handed back rather than waited for.
    """
    width = len(key_columns)
    casts = [cast_column(width + i, table.column(f, "mapped")) for i, f in enumerate(fields)]
    assignments = sql.SQL(", ").join(
        # A field is rewritten only where it really differs (numeric 500 = 500.0 keeps its text).
        sql.SQL(
            "{col} = CASE WHEN t.{col} IS DISTINCT FROM {new} THEN {new} ELSE t.{col} END"
        ).format(col=sql.Identifier(f), new=cast)
        for f, cast in zip(fields, casts, strict=True)
    )
    differs = sql.SQL(" OR ").join(
        sql.SQL("t.{} IS DISTINCT FROM {}").format(sql.Identifier(f), cast)
        for f, cast in zip(fields, casts, strict=True)
    )
    items = sql.SQL(", ").join(
        sql.SQL("e.value->>{} AS {}").format(sql.Literal(i), sql.Identifier(f"c{i}"))
        for i in range(width + len(fields))
    )
    return sql.SQL(
        "WITH v AS (SELECT e.n, {items} FROM pg_catalog.json_array_elements(%s::json) "
        "WITH ORDINALITY AS e(value, n)), "
        "locked AS MATERIALIZED (SELECT v.* FROM {table} AS t JOIN v "
        "ON {match} FOR NO KEY UPDATE OF t{skip}), "
        "written AS (UPDATE {table} AS t SET {assignments} FROM locked AS v "
        "WHERE {match} AND ({differs}) RETURNING v.n) "
        "SELECT n, false FROM locked UNION ALL SELECT n, true FROM written"
    ).format(
        items=items,
        skip=sql.SQL(" SKIP LOCKED" if skip_locked else ""),
        table=table_identifier(table.name),
        assignments=assignments,
        match=key_match(table, key_columns),
        differs=differs,
    )


def _is_row_error(error: psycopg.Error) -> bool:
    return (getattr(error, "sqlstate", None) or "").startswith(_ROW_SQLSTATE_CLASSES)


def apply_values(
    conn: Connection,
    table: TableInfo,
    key_columns: Sequence[str],
    fields: Sequence[str],
    rows: Sequence[tuple[Key, Sequence[Any]]],
    *,
    in_transaction: Callable[[Connection, Sequence[Key]], None] | None = None,
    lock_timeout: timedelta | None = None,
    skip_locked: bool = False,
) -> ApplyOutcome:
    """Write ``rows`` (key, values in ``fields`` order) in one transaction, set-based.

    Only rows whose values really differ are written. If the sandbox rejects a
    row (constraint, range), the batch rolls back and is bisected so every
    other row is still applied and each offender is reported by key. With
    ``skip_locked``, rows another session holds are skipped, and a lock not
    granted within ``lock_timeout`` makes the whole part busy: both come back
    in ``busy`` (without it, locks are waited for, as by any other writer).
    ``in_transaction`` runs inside the same transaction after the update, given
    the keys really updated (the history hook uses it).
    """
    statement = with_parameters(
        _update_statement(table, key_columns, fields, skip_locked=skip_locked),
        (*table.name.parts(), *key_columns, *fields),
    )
    timeout = None if lock_timeout is None else f"{max(1, int(lock_timeout / _MILLISECOND))}ms"
    outcome = ApplyOutcome([], [])
    # Parts still to write, the next one last. A loop rather than a recursive
    # closure: a closure calling itself is a reference cycle, which would keep
    # every batch's rows (and the caller's hook with its results) alive until
    # the garbage collector's slowest pass came round.
    parts: list[Sequence[tuple[Key, Sequence[Any]]]] = [rows]
    while parts:
        part = parts.pop()
        if not part:
            continue
        try:
            updated, busy = _write_part(conn, statement, part, timeout, in_transaction)
            if not skip_locked:
                busy = []  # every row was waited for: one not returned is gone
        except psycopg.Error as error:
            if skip_locked and getattr(error, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                outcome.busy.extend(key for key, _ in part)
                continue
            if not _is_row_error(error):
                raise translate_error(error, table.side, f"updating {table.name}") from None
            if len(part) == 1:
                reason = redact(str(error).strip().splitlines()[0])
                outcome.failures.append(RowFailure(part[0][0], reason))
                continue
            middle = len(part) // 2
            parts += (part[middle:], part[:middle])  # the first half is written first
            continue
        outcome.updated.extend(updated)
        outcome.busy.extend(busy)
    return outcome


def _write_part(
    conn: Connection,
    statement: sql.Composed,
    part: Sequence[tuple[Key, Sequence[Any]]],
    timeout: str | None,
    in_transaction: Callable[[Connection, Sequence[Key]], None] | None,
) -> tuple[list[Key], list[Key]]:
    """Write one part in one transaction: the keys updated, and the keys someone held."""
    params = (encode_rows([(*key, *values) for key, values in part]),)
    with pipelined_transaction(conn):
        if timeout is not None:
            conn.execute(_SET_LOCK_TIMEOUT, (timeout,))
        locked = conn.execute(statement, params).fetchall()
        updated = [part[n - 1][0] for n, written in locked if written]
        if in_transaction is not None and updated:
            in_transaction(conn, updated)
    obtained = {n for n, written in locked if not written}
    return updated, [key for n, (key, _) in enumerate(part, 1) if n not in obtained]
