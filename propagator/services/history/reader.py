"""``HistoryReader``: history reads for ``GET /history``, on a connection of their own.

Kept apart from the applier's connections so a page refresh never waits
behind a batch; a broken connection is dropped and reopened on the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import psycopg

from propagator.adapters.connections import Connection, open_connection
from propagator.errors import ConfigurationError, PropagatorError
from propagator.services.history.facade import History
from propagator.services.history.queries import HistoryQuery
from propagator.settings import Settings

__all__ = ["HistoryReader", "mapping_names"]

_READ_TIMEOUT: Final = timedelta(seconds=10)
"""The longest one history read may run (narrower when the settings say so)."""


def mapping_names(text: str | None) -> tuple[str, ...]:
    """The ``mapping`` parameter as names, each once: comma separated (repeats joined so)."""
    if text is None:
        return ()
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


class HistoryReader:
    """History reads for the HTTP endpoint: one connection of its own, one read at a time.

    Reads the whole history table of one sandbox; ``HistoryReaders`` routes the
    reads of several mappings, and several sandboxes, to readers like this one.
    """

    def __init__(self, history: History, settings: Settings) -> None:
        self.history = history
        self.settings = settings
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def read(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        """A page for query parameters; ``mapping`` may name only this reader's mapping
        (or be ``*``: every mapping)."""
        text = params.get("mapping")
        asked = mapping_names(None if text == "*" else text)
        for name in asked:
            if name != self.settings.mapping_name:
                raise ConfigurationError(
                    f"unknown mapping {name[:40]!r}: this history serves "
                    f"{self.settings.mapping_name}"
                )
        return self.read_page(HistoryQuery.from_params(params, mappings=asked))

    def read_page(self, filters: HistoryQuery) -> dict[str, Any]:
        """A page for ``filters`` as they are (their mappings already checked)."""
        with self._lock:
            try:
                return self.history.read(self._connection(), filters).as_dict()
            except PropagatorError:
                self._drop()
                raise

    async def __call__(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        return await asyncio.to_thread(self.read, params)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(
                self.settings,
                "sandbox",
                "history",
                autocommit=True,
                statement_timeout=_READ_TIMEOUT,
            )
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
