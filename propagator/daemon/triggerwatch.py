"""Production's change triggers, checked while the daemon runs.

The daemon's role may not (and should not) create triggers, so a production
table recreated without them, or triggers dropped or disabled by hand, cannot be
repaired here: it is made loud instead (a log line, ``/status``, a metric,
``/readyz``) while the periodic reconcile keeps the sandbox right. One check per
production table serves every mapping reading it, on a connection of its own,
once per heartbeat interval; a check that fails (production down, reported
elsewhere already) keeps the last answer and never stops the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

from propagator.adapters.connections import Connection, open_connection
from propagator.daemon.status import now_iso
from propagator.errors import PropagatorError, SchemaError
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.services import triggers
from propagator.services.trigger_columns import with_filter_columns
from propagator.settings import Settings, WatchedTable, watched_tables

__all__ = ["TriggerWatch", "watch_triggers"]

_log = get_logger("propagator.daemon")
_STATEMENT_TIMEOUT = timedelta(seconds=10)  # a catalog read; never hold a check for long


class Reader(Protocol):
    """A mapping of the table, as the daemon runs it (``MappingRuntime``)."""

    name: str
    settings: Settings
    metrics: MappingMetrics
    triggers: TriggerWatch | None


def read_status(conn: Connection, table: WatchedTable) -> triggers.TriggerStatus:
    """The table's trigger status as this daemon needs it.

    A daemon serving some of a table's mappings knows only their columns; triggers
    installed for every mapping of the settings file watch more. Those announce
    every change this daemon needs, so they are judged against what they watch.
    """
    found = triggers.status(conn, table)
    if found.current or not found.installed:
        return found
    spec = with_filter_columns(conn, triggers.trigger_spec(table))
    wider = set(found.watched_columns) > set(spec.watched_columns)
    if wider and found.key_columns == spec.key_columns and found.channel == spec.channel:
        return triggers.status(
            conn, dataclasses.replace(spec, watched_columns=found.watched_columns)
        )
    return found


class TriggerWatch:
    """The last known state of one production table's triggers, for every mapping reading it."""

    def __init__(self, table: WatchedTable, runtimes: Sequence[Reader]) -> None:
        self.table = table
        self.runtimes = tuple(runtimes)
        self.interval = table.mappings[0].heartbeat_interval.total_seconds()
        self.status: triggers.TriggerStatus | None = None
        self.seen_installed = False  # this daemon saw them installed: their loss is a surprise
        self.checked_at: str | None = None
        self.error: str | None = None
        self._conn: Connection | None = None

    def readiness_reason(self) -> str | None:
        """Why the triggers make the mappings unready; None while they announce every change.

        Reported everywhere but here: triggers never installed since this daemon
        started (a daemon deployed before a DBA installs them is waiting, not broken),
        and triggers of another release that still announce every change (the daemon
        and the triggers are upgraded one after the other; neither order may block a
        rollout).
        """
        status = self.status
        if status is None or not (status.installed or self.seen_installed):
            return None
        if all(_only_outdated(problem) for problem in status.problems):
            return None
        return self.problem()

    def problem(self) -> str | None:
        """What is wrong with the triggers, in one sentence; None while current or unknown."""
        status = self.status
        if status is None or status.current:
            return None
        problems = "; ".join(status.problems) or "not current"
        return f"production triggers missing or not current on {status.table}: {problems}"

    def describe(self) -> dict[str, Any]:
        """The ``triggers`` entry of a mapping's ``/status``."""
        status = self.status
        return {
            "table": str(self.table.table),
            "current": None if status is None else status.current,
            "installed": None if status is None else status.installed,
            "problems": [] if status is None else list(status.problems),
            "problem": self.problem(),
            "checked_at": self.checked_at,
            "check_error": self.error,
        }

    async def run(
        self, stopping: Callable[[], bool], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        try:
            while not stopping():
                await self.check()
                await sleep(self.interval)
        finally:
            await asyncio.to_thread(self.close)

    async def check(self) -> None:
        """One check; whatever goes wrong is logged and kept, never raised."""
        try:
            status = await asyncio.to_thread(self._read)
        except SchemaError as error:  # the table is gone, and its triggers with it
            status = _gone(str(self.table.table), str(error))
        except Exception as error:  # a check must never stop the daemon
            await asyncio.to_thread(self.close)
            self._failed(error)
            return
        self.error = None
        self.checked_at = now_iso()
        self._record(status)

    def _read(self) -> triggers.TriggerStatus:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(
                self.table.mappings[0],
                "production",
                "trigger check",
                autocommit=True,
                statement_timeout=_STATEMENT_TIMEOUT,
            )
        return read_status(self._conn, self.table)

    def _failed(self, error: Exception) -> None:
        message = str(error) if isinstance(error, PropagatorError) else repr(error)
        if message != self.error:
            _log.warning("trigger_check_failed", table=str(self.table.table), error=message)
        self.error = message

    def _record(self, status: triggers.TriggerStatus) -> None:
        before = self.status
        self.status = status
        self.seen_installed = self.seen_installed or status.installed
        for runtime in self.runtimes:
            runtime.metrics.set_triggers_current(status.current)
        if before is not None and (before.current, before.problems) == (
            status.current,
            status.problems,
        ):
            return  # logged when it changes, not every heartbeat
        if status.current:
            _log.info("triggers_current", table=status.table)
            return
        # Never installed yet is a deployment step still to come; a loss is an incident.
        report = _log.error if self.readiness_reason() else _log.warning
        report("triggers_not_current", table=status.table, problems=list(status.problems))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _gone(table: str, why: str) -> triggers.TriggerStatus:
    return triggers.TriggerStatus(
        table=table,
        installed=False,
        version=None,
        channel=None,
        key_columns=(),
        watched_columns=(),
        triggers=(),
        functions=(),
        current=False,
        problems=(why,),
    )


def _only_outdated(problem: str) -> bool:
    """A difference that leaves every change announced on the right channel with the right key."""
    return problem.startswith(("installed version ", "obsolete triggers: ")) or (
        " fire only for UPDATEs naming a watched column" in problem
    )


def watch_triggers(runtimes: Sequence[Reader]) -> list[TriggerWatch]:
    """One watch per production table the runtimes read, given to each of its runtimes."""
    by_name = {runtime.name: runtime for runtime in runtimes}
    watches = []
    for table in watched_tables([runtime.settings for runtime in runtimes]):
        readers = [by_name[name] for name in table.names]
        watch = TriggerWatch(table, readers)
        for runtime in readers:
            runtime.triggers = watch
        watches.append(watch)
    return watches
