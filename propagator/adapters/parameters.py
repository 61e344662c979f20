"""Values as parameters: rows sent as one JSON value, cast back to each column's type.

Identifiers from configuration are only ever rendered with ``sql.Identifier``;
values always travel as parameters (as text, cast to the column's own type by
the server, so every type round-trips the same way on every server version).
A ``%`` in a configured name or filter must not read as a placeholder, which
``with_parameters`` and ``filter_condition`` see to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import sql

from propagator.adapters.tables import ColumnInfo, TableInfo

__all__ = [
    "cast_column",
    "encode_rows",
    "filter_condition",
    "key_match",
    "to_sql_text",
    "unnest",
    "with_parameters",
]


def with_parameters(query: sql.Composed, names: Iterable[str]) -> sql.Composed:
    """``query`` ready to be sent with parameters: a ``%`` in a name stays a character.

    psycopg reads every ``%`` of a statement sent with parameters as the start
    of a placeholder, quoted names included (a column ``pct%b`` would read as a
    binary placeholder). ``names`` are the configured names the statement holds:
    when one has a ``%``, the ``%`` of every name and literal in it is doubled,
    leaving the template's own placeholders alone; otherwise (nearly always) the
    statement is returned as it is, at no cost.
    """
    if not any("%" in name for name in names):
        return query
    return _percent_escaped(query)


def _percent_escaped(query: sql.Composed) -> sql.Composed:
    parts: list[sql.Composable] = []
    for part in query:
        if isinstance(part, sql.Composed):
            part = _percent_escaped(part)
        elif isinstance(part, (sql.Identifier, sql.Literal)):
            text = part.as_string(None)
            if "%" in text:
                part = sql.SQL(text.replace("%", "%%"))
        parts.append(part)
    return sql.Composed(parts)


def filter_condition(where: str, *, parameterised: bool = False) -> sql.Composable:
    """The production filter, parenthesised (settings checked it cannot close them early).

    In a statement sent with parameters psycopg reads every ``%`` as the start of
    a placeholder, so there each is doubled and ``LIKE 'A%'`` stays a pattern;
    without parameters the text is sent exactly as written.
    """
    text = where.replace("%", "%%") if parameterised else where
    return sql.SQL("({})").format(sql.SQL(text))


def to_sql_text(value: Any) -> str | None:
    """A value's text form, which the server casts back to the column's type exactly."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "Infinity" if value > 0 else "-Infinity"
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()} seconds"
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, UUID | int | str):
        return str(value)
    return str(value)


def unnest(columns: Sequence[str]) -> sql.Composable:
    """Rows sent as one JSON parameter, as a derived table ``v(c0, c1, …)`` of text columns.

    One ``json.dumps`` (C speed) replaces a text conversion per value and a
    text array per column; each column is then cast to its own type by
    ``cast_column``, so every type round-trips through its text form as before.
    """
    return sql.SQL(
        "(SELECT {items} FROM pg_catalog.json_array_elements(%s::json) AS e) AS v"
    ).format(
        items=sql.SQL(", ").join(
            sql.SQL("e->>{} AS {}").format(sql.Literal(i), sql.Identifier(f"c{i}"))
            for i in range(len(columns))
        ),
    )


def _json_text(value: Any) -> Any:
    """The JSON form of a value json cannot encode natively: its PostgreSQL text form."""
    return to_sql_text(value)


def encode_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as one JSON array of arrays; numbers, text and booleans stay native."""
    try:
        return json.dumps(
            rows, default=_json_text, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
    except ValueError:  # NaN or infinite floats are not JSON: send their text form instead
        safe = [[to_sql_text(v) if isinstance(v, float) else v for v in row] for row in rows]
        return json.dumps(safe, default=_json_text, ensure_ascii=False, separators=(",", ":"))


_LENGTH_LIMITED = re.compile(r"^(character varying|character|bit varying|bit)\(\d+\)((?:\[\])*)$")
_UNLIMITED = {
    "character varying": "character varying",
    "character": "bpchar",
    "bit varying": "bit varying",
    "bit": "bit varying",
}


def _parameter_type(column: ColumnInfo) -> str:
    """The column's type without a length limit.

    An explicit cast to varchar(n), char(n) or bit(n) silently truncates or pads,
    which would write a wrong value and call it applied; assigning the unlimited
    value to the column instead fails for that row, which is then reported.
    """
    match = _LENGTH_LIMITED.match(column.type_sql)
    return _UNLIMITED[match.group(1)] + match.group(2) if match else column.type_sql


def cast_column(position: int, column: ColumnInfo) -> sql.Composable:
    """Column ``c<position>`` of ``unnest``'s derived table, cast to ``column``'s type."""
    # type_sql comes from format_type() in the catalog: already a valid, quoted type name.
    return sql.SQL("v.{}::{}").format(
        sql.Identifier(f"c{position}"), sql.SQL(_parameter_type(column))
    )


def key_match(table: TableInfo, key_columns: Sequence[str]) -> sql.Composable:
    """The table's rows (``t``) joined to the sent rows (``v``) on every key column."""
    return sql.SQL(" AND ").join(
        sql.SQL("t.{} = {}").format(sql.Identifier(c), cast_column(i, table.column(c, "key")))
        for i, c in enumerate(key_columns)
    )
