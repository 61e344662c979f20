"""Small background loops: the periodic reconcile, history retention, the liveness tick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from propagator.adapters.connections import open_connection
from propagator.errors import PropagatorError
from propagator.observability.logging import get_logger
from propagator.observability.metrics import Metrics
from propagator.services.history import History, PruneResult
from propagator.settings import Settings

__all__ = ["HistoryPruner", "ReconcileSchedule", "Ticker"]

_log = get_logger("propagator.daemon")
_PRUNE_CHECK_SECONDS = 5.0
_PRUNE_STATEMENTS_PER_TURN = 20  # then yield for a while: retention is never urgent
_TICK_SECONDS = 1.0

Sleep = Callable[[float], Awaitable[None]]


class ReconcileSchedule:
    """Asks for a full reconcile every ``reconcile_interval`` while this process leads."""

    def __init__(
        self,
        interval_seconds: float,
        is_leader: Callable[[], bool],
        want: Callable[[str], None],
        *,
        first_offset: float = 0.0,
    ) -> None:
        self.interval_seconds = interval_seconds
        self.first_offset = first_offset  # staggers mappings: not all in the same second
        self._is_leader = is_leader
        self._want = want

    async def run(self, stopping: Callable[[], bool], sleep: Sleep) -> None:
        offset = self.first_offset
        while not stopping():
            await sleep(self.interval_seconds + offset)
            offset = 0.0
            if self._is_leader() and not stopping():
                self._want("periodic")


class HistoryPruner:
    """As leader, deletes history older than ``history_retention`` in small batches."""

    def __init__(self, settings: Settings, history: History, is_leader: Callable[[], bool]) -> None:
        self.settings = settings
        self.history = history
        self._is_leader = is_leader

    async def run(self, stopping: Callable[[], bool], sleep: Sleep) -> None:
        while not stopping():
            if self._is_leader() and self.history.prune_due():
                try:
                    result = await asyncio.to_thread(self.prune_once)
                except PropagatorError as error:
                    _log.warning("history_prune_failed", error=str(error))
                else:
                    if result is not None and result.deleted:
                        _log.info(
                            "history_pruned",
                            deleted=result.deleted,
                            statements=result.statements,
                            complete=result.complete,
                        )
            await sleep(_PRUNE_CHECK_SECONDS)

    def prune_once(self) -> PruneResult | None:
        with open_connection(self.settings, "sandbox", "history pruner", autocommit=True) as conn:
            return self.history.prune(conn, max_statements=_PRUNE_STATEMENTS_PER_TURN)


class Ticker:
    """The liveness heartbeat: a loop that still turns, and the gauges sampled with it."""

    LIVENESS_SECONDS = 15.0

    def __init__(self, metrics: Metrics, sample: Callable[[], None]) -> None:
        self.metrics = metrics
        self._sample = sample
        self.last_tick = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.LIVENESS_SECONDS

    async def run(self, stopping: Callable[[], bool], sleep: Sleep) -> None:
        while not stopping():
            self.last_tick = time.monotonic()
            self.metrics.mark_loop_tick()
            self._sample()
            await sleep(_TICK_SECONDS)
