"""A DBA's view of the production triggers: a session LISTENing on their channel."""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from tests.helpers import Database

__all__ = ["CHANNEL", "SENTINEL", "Listener"]

CHANNEL = "propagator_jobs"
SENTINEL = "end-of-test-statements"


class Listener:
    """A plain autocommit connection LISTENing on the channel, as the daemon's would."""

    def __init__(self, database: Database, channel: str = CHANNEL) -> None:
        self.database = database
        self.channel = channel
        self.conn = database.connect()
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def payloads(self) -> list[str]:
        """Everything notified so far: a sentinel sent last marks the end, so no sleeps."""
        with self.database.connect() as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, SENTINEL))
        received: list[str] = []
        for notify in self.conn.notifies(timeout=30):
            if notify.payload == SENTINEL:
                return received
            received.append(notify.payload)
        raise AssertionError(f"the sentinel never arrived; got {received!r}")

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads()]

    def keys(self) -> list[list[Any]]:
        return [key for document in self.documents() for key in document.get("k", [])]
