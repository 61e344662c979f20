"""Which watched columns the triggers must compare as jsonb, asked of the production catalog.

A type without ``=`` (json, point, xml) would make ``IS DISTINCT FROM`` fail
inside the trigger and so fail the production statement; install and status
both need to know those columns before they render or compare any SQL.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.postgres import describe_table, translate_error
from propagator.services.trigger_spec import TriggerSpec

__all__ = ["Connection", "incomparable_columns"]

Connection = psycopg.Connection[tuple[Any, ...]]


def incomparable_columns(conn: Connection, spec: TriggerSpec) -> list[str]:
    """Watched columns whose type has no ``=`` (json, point, xml), after checking they exist."""
    table = describe_table(conn, spec.table, "production")
    for column in spec.key_columns:
        table.column(column, "key")
    for column in spec.value_columns:
        table.column(column, "mapped")
    incomparable: list[str] = []
    for column in spec.watched_columns:
        type_sql = table.columns[column].type_sql
        probe = sql.SQL("SELECT NULL::{0} IS DISTINCT FROM NULL::{0}").format(sql.SQL(type_sql))
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.errors.UndefinedFunction:
            incomparable.append(column)
        except psycopg.Error as error:
            raise translate_error(error, "production", f"checking column {column!r}") from None
    return incomparable
