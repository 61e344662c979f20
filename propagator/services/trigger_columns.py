"""What the triggers watch and how they compare it, asked of the production catalog.

A production filter's columns are watched too: changing one can bring a row into
a mapping. Which columns a filter reads is asked of PostgreSQL itself (the
dependencies of a temporary view over the filter, rolled back), never guessed
from its text. A type without ``=`` (json, point, xml) would make ``IS DISTINCT
FROM`` fail inside the trigger and so fail the production statement; install and
status both need to know those columns before they render or compare any SQL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.postgres import describe_table, table_identifier, translate_error
from propagator.services.trigger_spec import TriggerSpec
from propagator.sql import load_sql

__all__ = ["Connection", "filter_columns", "incomparable_columns", "with_filter_columns"]

_PROBE_VIEW = "propagator_filter_columns"

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


def filter_columns(conn: Connection, spec: TriggerSpec, production_filter: str) -> list[str]:
    """The columns of the table ``production_filter`` reads, in table order."""
    view = sql.Identifier(_PROBE_VIEW)
    create = sql.SQL("CREATE TEMPORARY VIEW {} AS SELECT 1 FROM {} WHERE ({})").format(
        view,
        table_identifier(spec.table),
        sql.SQL(production_filter),
    )
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(create)
            rows = conn.execute(
                load_sql("catalog/filter_columns.sql"),
                {"view": f"pg_temp.{_PROBE_VIEW}", "table": str(spec.table)},
            ).fetchall()
    except psycopg.Error as error:
        raise translate_error(
            error, "production", f"reading the columns of the production filter on {spec.table}"
        ) from None
    return [str(name) for (name,) in rows]


def with_filter_columns(conn: Connection, spec: TriggerSpec) -> TriggerSpec:
    """``spec`` watching its filters' columns too (after the keys and mapped sources)."""
    if not spec.filters:
        return spec
    watched = dict.fromkeys(spec.watched_columns)
    for production_filter in spec.filters:
        watched.update(dict.fromkeys(filter_columns(conn, spec, production_filter)))
    return dataclasses.replace(spec, watched_columns=tuple(watched), filters=())
