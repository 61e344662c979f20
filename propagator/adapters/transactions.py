"""Transactions whose statements travel together, for reads and writes by key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg import pq

from propagator.adapters.connections import Connection

__all__ = ["pipelined_transaction"]

_IDLE = pq.TransactionStatus.IDLE


@contextmanager
def pipelined_transaction(conn: Connection, *, read_only: bool = False) -> Iterator[None]:
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
