"""PostgreSQL access: connections, catalog checks, streaming reads, set-based apply.

Identifiers from configuration are only ever rendered with ``sql.Identifier``;
values always travel as parameters (as text, cast to the column's own type by
the server, so every type round-trips the same way on every server version).
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql

from propagator.core.identifiers import QualifiedName
from propagator.core.mapping import Key, MappingSpec
from propagator.core.plan import RowFailure
from propagator.core.redact import mask_url, redact
from propagator.errors import (
    DatabaseUnavailableError,
    PermanentError,
    PropagatorError,
    SchemaError,
    Side,
    TransientError,
)

__all__ = [
    "ApplyOutcome",
    "ColumnInfo",
    "Side",
    "TableInfo",
    "apply_values",
    "connect",
    "describe_table",
    "filter_condition",
    "prefetch",
    "read_by_keys",
    "stream_rows",
    "table_identifier",
    "to_sql_text",
    "translate_error",
    "with_parameters",
]


_FETCH_SIZE = 10_000
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
_ROW_SQLSTATE_CLASSES = ("22", "23")  # data exceptions, integrity violations: blame the row
_IDLE = pq.TransactionStatus.IDLE


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_sql: str
    category: str  # pg_type.typcategory: 'S' string, 'N' numeric, ...

    @property
    def needs_c_collation(self) -> bool:
        return self.category == "S"


@dataclass(frozen=True, slots=True)
class TableInfo:
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


@dataclass(slots=True)
class ApplyOutcome:
    """What a set-based apply really changed, and the rows the sandbox refused."""

    updated: list[Key]
    failures: list[RowFailure]


def table_identifier(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(*name.parts())


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


def translate_error(error: BaseException, side: Side, what: str) -> PropagatorError:
    """Map a psycopg error onto transient/permanent at the adapter boundary."""
    if isinstance(error, PropagatorError):
        return error
    detail = redact(str(error).strip().splitlines()[0] if str(error).strip() else repr(error))
    sqlstate = getattr(error, "sqlstate", None) or ""
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and not sqlstate:
        return DatabaseUnavailableError(f"{side} database unavailable while {what}: {detail}", side)
    if sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES) or sqlstate in _TRANSIENT_SQLSTATES:
        return TransientError(f"{side} database error while {what}: {detail}")
    if isinstance(error, pg_errors.UndefinedColumn | pg_errors.UndefinedTable):
        return SchemaError(f"{side} schema changed while {what}: {detail}")
    return PermanentError(f"{side} database refused {what}: {detail}")


def connect(
    url: str,
    side: Side,
    *,
    autocommit: bool = False,
    connect_timeout: float = 10.0,
    statement_timeout: timedelta | None = None,
    application_name: str = "propagator",
) -> psycopg.Connection[tuple[Any, ...]]:
    """Open one connection, or raise ``DatabaseUnavailableError`` naming the side and host."""
    options: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(connect_timeout)),
        "application_name": application_name,
        "autocommit": autocommit,
        # A peer that vanished (no FIN, no RST) must not hang a writer for hours:
        # keepalives notice a silent peer while waiting for an answer, and
        # tcp_user_timeout gives up on data the peer never acknowledges.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    if statement_timeout is not None and statement_timeout > timedelta(0):
        milliseconds = int(statement_timeout.total_seconds() * 1000)
        options["options"] = f"-c statement_timeout={milliseconds}"
    try:
        return psycopg.connect(url, **options)
    except psycopg.Error as error:
        reason = redact(str(error).strip().splitlines()[-1] if str(error).strip() else "")
        raise DatabaseUnavailableError(
            f"cannot connect to the {side} database at {mask_url(url)}: {reason}", side
        ) from None


_DESCRIBE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_FIND_TABLE = """
SELECT c.oid FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (n.nspname = %(schema)s OR (%(schema)s IS NULL AND pg_catalog.pg_table_is_visible(c.oid)))
"""


def describe_table(
    conn: psycopg.Connection[tuple[Any, ...]], name: QualifiedName, side: Side
) -> TableInfo:
    """Columns and types of a table, or a ``SchemaError`` naming what is missing."""
    try:
        with conn.transaction():
            row = conn.execute(_FIND_TABLE, {"name": name.name, "schema": name.schema}).fetchone()
            if row is None:
                raise SchemaError(f"the {side} table {name} does not exist")
            columns = {
                column: ColumnInfo(column, type_sql, category)
                for column, type_sql, category in conn.execute(_DESCRIBE, (row[0],))
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


def _order_by(table: TableInfo, key_columns: Sequence[str]) -> sql.Composable:
    """Key order that does not depend on either server's collation."""
    parts: list[sql.Composable] = []
    for column in key_columns:
        ident = sql.Identifier(column)
        if table.column(column, "key").needs_c_collation:
            parts.append(sql.SQL('{} COLLATE "C"').format(ident))
        else:
            parts.append(ident)
    return sql.SQL(", ").join(parts)


def stream_rows(
    conn: psycopg.Connection[tuple[Any, ...]],
    table: TableInfo,
    key_columns: Sequence[str],
    value_columns: Sequence[str],
    *,
    where: str | None = None,
    fetch_size: int = _FETCH_SIZE,
) -> Iterator[tuple[Any, ...]]:
    """Rows ``(*key, *values)`` in collation-independent key order, from one snapshot.

    A server-side cursor keeps client memory flat whatever the table size.
    Rows with a NULL in a key column cannot be matched and are skipped.
    """
    not_null = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in key_columns
    )
    condition: sql.Composable = not_null
    if where:
        condition = sql.SQL("{} AND ({})").format(filter_condition(where), not_null)
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {condition} ORDER BY {order}").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in (*key_columns, *value_columns)),
        table=table_identifier(table.name),
        condition=condition,
        order=_order_by(table, key_columns),
    )
    what = f"reading {table.name}"
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with conn.cursor(name="propagator_stream") as cursor:
                cursor.itersize = fetch_size
                cursor.execute(query)
                while batch := cursor.fetchmany(fetch_size):
                    yield from batch
    except psycopg.Error as error:
        raise translate_error(error, table.side, what) from None


def prefetch(rows: Iterator[tuple[Any, ...]], depth: int = 4, chunk: int = 5000) -> Iterator[Any]:
    """Read a stream on a background thread, starting now, so both servers are read at once.

    The reading starts before the first row is asked for: a consumer that waits
    for one stream's first row before touching the other would otherwise run
    the two servers' queries one after the other.
    """
    stream = _prefetched(rows, depth, chunk)
    next(stream)  # runs up to the thread's start
    return stream


def _prefetched(rows: Iterator[tuple[Any, ...]], depth: int, chunk: int) -> Iterator[Any]:
    buffer: queue.Queue[list[Any] | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            block: list[Any] = []
            for row in rows:
                block.append(row)
                if len(block) >= chunk:
                    while not stop.is_set():
                        try:
                            buffer.put(block, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                    block = []
            buffer.put(block)
            buffer.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            buffer.put(error)

    thread = threading.Thread(target=pump, name="propagator-prefetch", daemon=True)
    thread.start()
    try:
        yield None  # taken by ``prefetch``: the generator is started, so closing it stops the pump
        while True:
            item = buffer.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        thread.join(timeout=5)


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


def _unnest(columns: Sequence[str]) -> sql.Composable:
    """Rows sent as one JSON parameter, as a derived table ``v(c0, c1, …)`` of text columns.

    One ``json.dumps`` (C speed) replaces a text conversion per value and a
    text array per column; each column is then cast to its own type by
    ``_cast``, so every type round-trips through its text form as before.
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


def _encode_rows(rows: Sequence[Sequence[Any]]) -> str:
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


def _cast(position: int, column: ColumnInfo) -> sql.Composable:
    # type_sql comes from format_type() in the catalog: already a valid, quoted type name.
    return sql.SQL("v.{}::{}").format(
        sql.Identifier(f"c{position}"), sql.SQL(_parameter_type(column))
    )


def _key_match(table: TableInfo, key_columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("t.{} = {}").format(sql.Identifier(c), _cast(i, table.column(c, "key")))
        for i, c in enumerate(key_columns)
    )


def read_by_keys(
    conn: psycopg.Connection[tuple[Any, ...]],
    table: TableInfo,
    key_columns: Sequence[str],
    value_columns: Sequence[str],
    keys: Sequence[Key],
    *,
    where: str | None = None,
) -> list[tuple[Any, ...]]:
    """Current rows ``(*key, *values)`` for a set of keys, in one round trip."""
    if not keys:
        return []
    query = sql.SQL(
        "SELECT {columns} FROM {table} AS t JOIN (SELECT DISTINCT * FROM {unnest}) AS v "
        "ON {match}{filter}"
    ).format(
        columns=sql.SQL(", ").join(
            sql.SQL("t.{}").format(sql.Identifier(c)) for c in (*key_columns, *value_columns)
        ),
        table=table_identifier(table.name),
        unnest=_unnest(key_columns),
        match=_key_match(table, key_columns),
        filter=(
            sql.SQL(" WHERE {}").format(filter_condition(where, parameterised=True))
            if where
            else sql.SQL("")
        ),
    )
    try:
        with _pipelined_transaction(conn, read_only=table.side == "production"):
            names = (*table.name.parts(), *key_columns, *value_columns)
            cursor = conn.execute(with_parameters(query, names), (_encode_rows(keys),))
        return cursor.fetchall()
    except psycopg.Error as error:
        raise translate_error(error, table.side, f"reading {table.name} by key") from None


@contextmanager
def _pipelined_transaction(
    conn: psycopg.Connection[tuple[Any, ...]], *, read_only: bool = False
) -> Iterator[None]:
    """One transaction whose statements travel together: a round trip per fetch, plus one.

    BEGIN, the statements and COMMIT are sent in pipeline mode and synchronised
    only where a result is needed (a fetch) and at the end. Under a busy CPU
    every round trip costs a scheduling delay on both ends, so a read by key
    costs one round trip instead of four. psycopg's own transaction blocks sync
    at every boundary, so this one is explicit (the connection is in
    autocommit meanwhile, so psycopg adds no BEGIN of its own). When anything
    fails the transaction is rolled back here and the error propagates; inside
    a caller's transaction this is a plain savepoint block.
    """
    if conn.autocommit or conn.info.transaction_status != _IDLE:
        with conn.transaction():
            if read_only:
                conn.execute("SET TRANSACTION READ ONLY")
            yield
        return
    conn.autocommit = True
    try:
        with conn.pipeline():
            conn.execute("BEGIN READ ONLY" if read_only else "BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != _IDLE:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise
    finally:
        if not conn.closed and conn.info.transaction_status == _IDLE:
            conn.autocommit = False


_ASSIGN = sql.SQL("{col} = CASE WHEN t.{col} IS DISTINCT FROM {new} THEN {new} ELSE t.{col} END")


def _update_statement(
    table: TableInfo, key_columns: Sequence[str], fields: Sequence[str]
) -> sql.Composed:
    width = len(key_columns)
    casts = [_cast(width + i, table.column(f, "mapped")) for i, f in enumerate(fields)]
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
        unnest=_unnest([*key_columns, *fields]),
        match=_key_match(table, key_columns),
        differs=differs,
        keys=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key_columns),
    )


def _is_row_error(error: psycopg.Error) -> bool:
    return (getattr(error, "sqlstate", None) or "").startswith(_ROW_SQLSTATE_CLASSES)


def apply_values(
    conn: psycopg.Connection[tuple[Any, ...]],
    table: TableInfo,
    key_columns: Sequence[str],
    fields: Sequence[str],
    rows: Sequence[tuple[Key, Sequence[Any]]],
    *,
    in_transaction: Callable[[psycopg.Connection[tuple[Any, ...]], Sequence[Key]], None]
    | None = None,
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
        params = (_encode_rows([(*key, *values) for key, values in part]),)
        try:
            with _pipelined_transaction(conn):
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
