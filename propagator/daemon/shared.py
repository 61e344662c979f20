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

import psycopg

from propagator.adapters.connections import Connection, open_connection
from propagator.settings import Settings

__all__ = ["SharedProduction"]


class SharedProduction:
    """The production connection the writers of one production database take turns on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.RLock()  # held around each use; re-entrant for prepare+read
        self._conn: Connection | None = None

    def connection(self) -> Connection:
        """The open connection (opened or replaced now if needed); call holding ``lock``."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
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
