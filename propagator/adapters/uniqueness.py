"""What the catalog and the rows say about the key columns and the production filter.

Read once while a sync is prepared, before anything is read in full or
written: the unique indexes that can prove the key columns unique, which key
columns may hold NULL, one duplicate key where no index proves anything (a
bounded query under the connection's statement timeout), and whether the
production filter is an expression the server accepts on this table.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.parameters import filter_condition
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.core.mapping import Key
from propagator.core.uniqueness import UniqueIndex
from propagator.errors import SchemaError, SettingsMismatchError
from propagator.settings import env_name
from propagator.sql import load_sql

__all__ = ["KeyCatalog", "check_filter", "find_duplicate", "key_catalog"]

# Class 42 is "syntax error or access rule violation", class 22 "data exception"
# (a literal the column's type cannot read); 42501 is a refused privilege, not the filter's fault.
_FILTER_SQLSTATE_CLASSES = ("42", "22")
_INSUFFICIENT_PRIVILEGE = "42501"


class KeyCatalog:
    """One table's unique indexes on plain columns and its nullable key columns."""

    __slots__ = ("indexes", "nullable")

    def __init__(self, indexes: tuple[UniqueIndex, ...], nullable: tuple[str, ...]) -> None:
        self.indexes = indexes
        self.nullable = nullable


def key_catalog(conn: Connection, table: TableInfo, key_columns: Sequence[str]) -> KeyCatalog:
    """The unique indexes of ``table`` and which of ``key_columns`` may hold NULL."""
    try:
        with conn.transaction():
            row = conn.execute(
                load_sql("catalog/find_table.sql"),
                {"name": table.name.name, "schema": table.name.schema},
            ).fetchone()
            if row is None:
                raise SchemaError(f"the {table.side} table {table.name} does not exist")
            indexes = tuple(
                UniqueIndex(name, tuple(columns), contype)
                for name, contype, columns in conn.execute(
                    load_sql("catalog/unique_indexes.sql"), {"table": row[0]}
                )
            )
            nullable = tuple(
                name
                for (name,) in conn.execute(
                    load_sql("catalog/nullable_columns.sql"),
                    {"table": row[0], "columns": list(key_columns)},
                )
            )
    except psycopg.Error as error:
        raise translate_error(error, table.side, f"reading the indexes of {table.name}") from None
    return KeyCatalog(indexes, nullable)


def find_duplicate(
    conn: Connection, table: TableInfo, key_columns: Sequence[str], where: str | None = None
) -> Key | None:
    """One key held by two rows of ``table`` (rows ``where`` selects), or None.

    Rows with a NULL key part are left out: they are never matched. The query
    stops at the first duplicate; the connection's statement timeout bounds it.
    """
    columns = sql.SQL(", ").join(sql.Identifier(column) for column in key_columns)
    conditions: list[sql.Composable] = [
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(column)) for column in key_columns
    ]
    if where:
        conditions.append(filter_condition(where))
    query = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {conditions} "
        "GROUP BY {columns} HAVING count(*) > 1 LIMIT 1"
    ).format(
        columns=columns,
        table=table_identifier(table.name),
        conditions=sql.SQL(" AND ").join(conditions),
    )
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            row = conn.execute(query).fetchone()
    except pg_errors.QueryCanceled as error:
        if "statement timeout" not in str(error):
            raise translate_error(error, table.side, "looking for duplicate keys") from None
        names = ", ".join(key_columns)
        raise SettingsMismatchError(
            f"no unique index covers the key columns ({names}) of the {table.side} table "
            f"{table.name} and looking for a duplicate key took longer than "
            f"{env_name('statement_timeout')}: add a unique index on ({names})"
        ) from None
    except psycopg.Error as error:
        what = f"looking for duplicate keys in {table.name}"
        raise translate_error(error, table.side, what) from None
    return None if row is None else tuple(row)


def check_filter(conn: Connection, table: TableInfo, where: str) -> None:
    """Refuse a filter the server cannot run on ``table`` (a missing column, a type error).

    The statement is planned but returns no row (``LIMIT 0``), so nothing is read.
    """
    query = sql.SQL("SELECT 1 FROM {table} WHERE {condition} LIMIT 0").format(
        table=table_identifier(table.name), condition=filter_condition(where)
    )
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(query)
    except psycopg.Error as error:
        sqlstate = getattr(error, "sqlstate", None) or ""
        if sqlstate.startswith(_FILTER_SQLSTATE_CLASSES) and sqlstate != _INSUFFICIENT_PRIVILEGE:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else sqlstate
            raise SettingsMismatchError(
                f"invalid setting {env_name('production_filter')}: {detail}"
            ) from None
        raise translate_error(error, table.side, f"checking the filter on {table.name}") from None
