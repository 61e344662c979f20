"""Writing the sandbox: one set-based UPDATE per batch, refused rows isolated by bisection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.parameters import (
    cast_column,
    encode_rows,
    key_match,
    unnest,
    with_parameters,
)
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.adapters.transactions import pipelined_transaction
from propagator.core.mapping import Key
from propagator.core.plan import RowFailure
from propagator.core.redact import redact

__all__ = ["ApplyOutcome", "apply_values"]

_ROW_SQLSTATE_CLASSES = ("22", "23")  # data exceptions, integrity violations: blame the row


@dataclass(slots=True)
class ApplyOutcome:
    """What a set-based apply really changed, and the rows the sandbox refused."""

    updated: list[Key]
    failures: list[RowFailure]


def _update_statement(
    table: TableInfo, key_columns: Sequence[str], fields: Sequence[str]
) -> sql.Composed:
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
    return sql.SQL(
        "UPDATE {table} AS t SET {assignments} FROM {unnest} WHERE {match} AND ({differs}) "
        "RETURNING {keys}"
    ).format(
        table=table_identifier(table.name),
        assignments=assignments,
        unnest=unnest([*key_columns, *fields]),
        match=key_match(table, key_columns),
        differs=differs,
        keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_columns),
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
) -> ApplyOutcome:
    """Write ``rows`` (key, values in ``fields`` order) in one transaction, set-based.

    Only rows whose values really differ are written. If the sandbox rejects a
    row (constraint, range), the batch rolls back and is bisected so every
    other row is still applied and each offender is reported by key.
    ``in_transaction`` runs inside the same transaction after the update, given
    the keys really updated (the history hook uses it).
    """
    statement = with_parameters(
        _update_statement(table, key_columns, fields),
        (*table.name.parts(), *key_columns, *fields),
    )
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
        params = (encode_rows([(*key, *values) for key, values in part]),)
        try:
            with pipelined_transaction(conn):
                updated = [tuple(r) for r in conn.execute(statement, params).fetchall()]
                if in_transaction is not None and updated:
                    in_transaction(conn, updated)
        except psycopg.Error as error:
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
    return outcome
