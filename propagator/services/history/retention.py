"""Retention: history older than ``history_retention`` is deleted by age, in small batches.

Each delete is its own short transaction (``sql/history/prune.sql``), so
pruning never holds locks long; a turn may stop after a few statements and
leave the rest for the next one. Rows are pruned by age whatever their mapping,
so a removed or renamed mapping's rows age out too; the daemon runs one pruner per
history table, however many mappings write into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg

from propagator.adapters.connections import Connection
from propagator.adapters.postgres import translate_error, with_parameters
from propagator.services.history.schema import schema_statement

__all__ = ["PRUNE_BATCH_ROWS", "PRUNE_INTERVAL", "PruneResult", "PruneSchedule", "prune"]

PRUNE_BATCH_ROWS: Final = 5_000
"""Rows deleted per retention statement: short transactions, no long locks."""
PRUNE_INTERVAL: Final = timedelta(minutes=5)
"""How often the daemon prunes; retention is by age, so more often gains nothing."""


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows older than ``cutoff`` were deleted, in how many statements."""

    cutoff: datetime
    deleted: int
    statements: int
    complete: bool  # False when it stopped at max_statements with old rows maybe left
    endpoints_told: int = 0  # webhook endpoints sent a gap notice (rows held too long)


def prune(
    conn: Connection,
    schema: str,
    retention: timedelta,
    *,
    batch_rows: int = PRUNE_BATCH_ROWS,
    max_statements: int | None = None,
    now: datetime | None = None,
    hold_max: timedelta = timedelta(days=7),
) -> PruneResult:
    """Delete history older than ``retention``, ``batch_rows`` per transaction.

    Rows a webhook endpoint (any with a cursor here) has not received are kept for
    up to ``hold_max`` more; older ones go, and those endpoints are marked to be told.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    cutoff = (now or datetime.now(UTC)) - retention
    statement = with_parameters(schema_statement("history/prune.sql", schema), [schema])
    parameters = {
        "cutoff": cutoff,
        "hold_cutoff": cutoff - hold_max,
        "batch_rows": batch_rows,
    }
    deleted = statements = told = 0
    try:
        while max_statements is None or statements < max_statements:
            with conn.transaction():
                row = conn.execute(statement, parameters).fetchone()
            count, endpoints = (int(row[0]), int(row[1])) if row else (0, 0)
            statements += 1
            deleted += count
            told += endpoints
            if count < batch_rows:
                return PruneResult(cutoff, deleted, statements, True, told)
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", "pruning the sync history") from None
    return PruneResult(cutoff, deleted, statements, False, told)


class PruneSchedule:
    """When the next prune is due: at once, then ``interval`` after each complete one.

    An unfinished prune (stopped at its statement budget) leaves pruning due, so
    the next turn carries on where it stopped.
    """

    def __init__(self, interval: timedelta, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._last_complete: float | None = None

    def due(self) -> bool:
        return (
            self._last_complete is None
            or self._clock() - self._last_complete >= self.interval.total_seconds()
        )

    def finished(self, result: PruneResult) -> None:
        """Note a prune that ran: complete ones restart the interval, others keep it due."""
        self._last_complete = self._clock() if result.complete else None
