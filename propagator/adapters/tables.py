"""What a table looks like on its server, and whether a mapping fits it.

A table is described once from the catalog (columns, types, type categories);
everything that reads or writes it afterwards renders names and key order from
that description, so the statements never depend on either server's collation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.core.identifiers import QualifiedName
from propagator.core.mapping import MappingSpec
from propagator.errors import SchemaError, Side
from propagator.sql import load_sql

__all__ = [
    "ColumnInfo",
    "TableInfo",
    "check_mapping",
    "describe_table",
    "key_order",
    "table_identifier",
]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column as the catalog describes it."""

    name: str
    type_sql: str
    category: str  # pg_type.typcategory: 'S' string, 'N' numeric, ...

    @property
    def needs_c_collation(self) -> bool:
        return self.category == "S"


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table on one side: its name and its columns by name."""

    side: Side
    name: QualifiedName
    columns: dict[str, ColumnInfo]

    def column(self, name: str, role: str) -> ColumnInfo:
        try:
            return self.columns[name]
        except KeyError:
            raise SchemaError(
                f"{role} column {name!r} does not exist in the {self.side} table {self.name}"
            ) from None


def table_identifier(name: QualifiedName) -> sql.Identifier:
    """The table's name, schema-qualified when configured so, quoted as an identifier."""
    return sql.Identifier(*name.parts())


def describe_table(conn: Connection, name: QualifiedName, side: Side) -> TableInfo:
    """Columns and types of a table, or a ``SchemaError`` naming what is missing."""
    try:
        with conn.transaction():
            row = conn.execute(
                load_sql("catalog/find_table.sql"), {"name": name.name, "schema": name.schema}
            ).fetchone()
            if row is None:
                raise SchemaError(f"the {side} table {name} does not exist")
            columns = {
                column: ColumnInfo(column, type_sql, category)
                for column, type_sql, category in conn.execute(
                    load_sql("catalog/describe_table.sql"), (row[0],)
                )
            }
    except psycopg.Error as error:
        raise translate_error(error, side, f"reading the definition of {name}") from None
    return TableInfo(side, name, columns)


def check_mapping(production: TableInfo, sandbox: TableInfo, spec: MappingSpec) -> None:
    """Every key and mapped column exists on its side, before anything is read or written."""
    for column in spec.key_columns:
        production.column(column, "key")
        sandbox.column(column, "key")
    for mapping in spec.field_mappings:
        production.column(mapping.source, "mapped")
        sandbox.column(mapping.target, "mapped")


def key_order(table: TableInfo, key_columns: Sequence[str]) -> sql.Composable:
    """Key order that does not depend on either server's collation."""
    parts: list[sql.Composable] = []
    for column in key_columns:
        ident = sql.Identifier(column)
        if table.column(column, "key").needs_c_collation:
            parts.append(sql.SQL('{} COLLATE "C"').format(ident))
        else:
            parts.append(ident)
    return sql.SQL(", ").join(parts)
