"""One production connection per production database, shared by every writer reading it.

Writers read production only by key, a few milliseconds per batch; each of
twenty mappings holding two connections of its own would cost production forty
idle backends. When several mappings read a database, their writers take turns
on one connection instead (a lock around each read), and the LISTEN connection
is the only other one. A broken connection is replaced at the next read.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Final

import psycopg

from propagator.adapters.connections import Connection, open_connection
from propagator.settings import Settings

__all__ = ["PROBE_AFTER_IDLE_SECONDS", "SharedProduction", "usable"]

PROBE_AFTER_IDLE_SECONDS: Final = 2.0
"""A kept connection idle longer than this is probed before use: its server may have restarted."""


def usable(conn: Connection, idle_seconds: float) -> bool:
    """Whether a kept connection still works, checked cheaply before it is used.

    A server that ended the session (a restart, a dropped database) has closed
    the socket: reading what is there says so without a round trip. A
    connection idle for a while is also asked ``SELECT 1``, for a peer that
    vanished without a word.
    """
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return True  # inside a transaction (a caller's own): not ours to probe
    try:
        for _ in range(2):  # the first read may take the server's last words, the second EOF
            conn.pgconn.consume_input()
        if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
            return False
        if idle_seconds >= PROBE_AFTER_IDLE_SECONDS:
            conn.execute("SELECT 1")
            if not conn.autocommit:
                conn.rollback()  # leave no transaction open behind the probe
    except psycopg.Error:
        return False
    return True


class SharedProduction:
    """The production connection the writers of one production database take turns on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.RLock()  # held around each use; re-entrant for prepare+read
        self._conn: Connection | None = None
        self._last_used = 0.0

    def connection(self) -> Connection:
        """The open connection (opened or replaced now if needed); call holding ``lock``."""
        conn = self._conn
        idle, self._last_used = time.monotonic() - self._last_used, time.monotonic()
        if conn is None or not usable(conn, idle):
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._conn = conn = open_connection(
                self.settings, "production", "reader", application_name="propagator reader"
            )
        return conn

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
