"""Reading rows: whole tables streamed in key order, or a set of keys in one round trip."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.parameters import (
    encode_rows,
    filter_condition,
    key_match,
    unnest,
    with_parameters,
)
from propagator.adapters.tables import TableInfo, key_order, table_identifier
from propagator.adapters.transactions import pipelined_transaction
from propagator.core.mapping import Key

__all__ = ["limit_parallel_workers", "prefetch", "read_by_keys", "stream_rows"]

_FETCH_SIZE = 10_000


def limit_parallel_workers(conn: Connection, workers: int) -> None:
    """Let this transaction's queries use at most ``workers`` parallel workers (never
    more than the server's own ``max_parallel_workers_per_gather``)."""
    conn.execute(
        "SELECT pg_catalog.set_config('max_parallel_workers_per_gather', least(%s, "
        "current_setting('max_parallel_workers_per_gather')::int)::text, true)",
        (workers,),
    )


def stream_rows(
    conn: Connection,
    table: TableInfo,
    key_columns: Sequence[str],
    value_columns: Sequence[str],
    *,
    where: str | None = None,
    fetch_size: int = _FETCH_SIZE,
    parallel_workers: int | None = None,
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
        order=key_order(table, key_columns),
    )
    what = f"reading {table.name}"
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if parallel_workers is not None:
                limit_parallel_workers(conn, parallel_workers)
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


def read_by_keys(
    conn: Connection,
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
        unnest=unnest(key_columns),
        match=key_match(table, key_columns),
        filter=(
            sql.SQL(" WHERE {}").format(filter_condition(where, parameterised=True))
            if where
            else sql.SQL("")
        ),
    )
    try:
        with pipelined_transaction(conn, read_only=table.side == "production"):
            names = (*table.name.parts(), *key_columns, *value_columns)
            cursor = conn.execute(with_parameters(query, names), (encode_rows(keys),))
        return cursor.fetchall()
    except psycopg.Error as error:
        raise translate_error(error, table.side, f"reading {table.name} by key") from None
