"""``History``: the daemon's and the CLI's handle on history as configured.

It ties the parts together (schema setup, the recording hook, reads, retention)
and turns each into a no-op when ``history_enabled=false``. One ``History`` serves
one mapping: it records that mapping's name; pruning is by age, for the whole table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from propagator.adapters.connections import Connection
from propagator.errors import ConfigurationError
from propagator.services.context import AppliedHook
from propagator.services.history.queries import HistoryPage, HistoryQuery, query
from propagator.services.history.recording import recording_hook
from propagator.services.history.retention import PRUNE_INTERVAL, PruneResult, PruneSchedule, prune
from propagator.services.history.schema import SetupResult, require_current, setup
from propagator.settings import Settings

__all__ = ["History"]


class History:
    """History as configured: setup, the apply hook, reads and periodic pruning.

    With ``history_enabled=false`` every method is a no-op that touches no
    database: ``hook()`` returns None, so ``converge_keys`` writes nothing extra.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        prune_interval: timedelta = PRUNE_INTERVAL,
    ) -> None:
        self.enabled = settings.history_enabled
        self.mapping = settings.mapping_name
        self.schema = settings.history_schema
        self.retention = settings.history_retention
        self.hold_max = settings.webhook_hold_max
        self._schedule = PruneSchedule(prune_interval, clock)
        self.rows_recorded = 0
        self.last_prune: PruneResult | None = None

    @property
    def prune_interval(self) -> timedelta:
        return self._schedule.interval

    def setup(self, conn: Connection) -> SetupResult | None:
        return setup(conn, self.schema) if self.enabled else None

    def describe(self) -> dict[str, Any]:
        """For ``/status``: whether history is kept, where, and what retention did last."""
        if not self.enabled:
            return {"enabled": False}
        last = self.last_prune
        return {
            "enabled": True,
            "schema": self.schema,
            "retention_seconds": self.retention.total_seconds(),
            "rows_recorded": self.rows_recorded,
            "last_prune": None
            if last is None
            else {"cutoff": last.cutoff.isoformat(), "deleted": last.deleted},
        }

    def check(self, conn: Connection) -> None:
        """Fail with one clear line unless the schema is set up at this release's version."""
        if self.enabled:
            require_current(conn, self.schema)

    def hook(
        self, *, changed_at: float | datetime | None = None, after: AppliedHook | None = None
    ) -> AppliedHook | None:
        """The ``on_applied`` hook for one batch of changes produced at ``changed_at``.

        Every call of the returned hook is one sandbox transaction, so it gets a
        batch id of its own (a bisected batch gives each committed part its own).
        ``after`` runs first in the same transaction (a leadership check, say).
        """
        if not self.enabled:
            return after
        return recording_hook(
            self.schema,
            changed_at=changed_at,
            after=after,
            counted=self._count_recorded,
            mapping=self.mapping,
        )

    def _count_recorded(self, rows: int) -> None:
        self.rows_recorded += rows

    def read(self, conn: Connection, filters: HistoryQuery) -> HistoryPage:
        """A page of this sandbox's history; ``filters.mappings`` says whose (empty: everyone's)."""
        if not self.enabled:
            raise ConfigurationError("history is disabled (PROPAGATOR_HISTORY_ENABLED=false)")
        return query(conn, self.schema, filters)

    def prune_due(self) -> bool:
        return self.enabled and self._schedule.due()

    def prune(
        self, conn: Connection, *, max_statements: int | None = None, force: bool = False
    ) -> PruneResult | None:
        """Prune old rows (every mapping's) when due or forced; at most ``max_statements``."""
        if not self.enabled or not (force or self.prune_due()):
            return None
        result = prune(
            conn,
            self.schema,
            self.retention,
            max_statements=max_statements,
            hold_max=self.hold_max,
        )
        self._schedule.finished(result)
        self.last_prune = result
        return result
