"""The sandbox writers: each holds its own pair of connections, used by one thread at a time.

Writing is synchronous psycopg (run in a thread by the pipeline): converging a
batch of keys, or a full reconcile, always through ``services`` so every writer
re-reads production and writes only real differences.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors

from propagator.core.debounce import Batch, DebounceBuffer
from propagator.core.report import ReconcileReport
from propagator.daemon.leadership import Fence
from propagator.daemon.requests import ReconcileSource
from propagator.daemon.shared import SharedProduction, usable
from propagator.errors import SchemaError
from propagator.observability.logging import get_logger
from propagator.services.context import SyncContext
from propagator.services.converge import BatchResult, converge_keys
from propagator.services.history import History
from propagator.services.preflight import preflight
from propagator.services.reconcile import run_reconcile
from propagator.services.sync import SyncSession
from propagator.settings import Settings

__all__ = ["Lane", "SandboxWriter", "Writer", "WriterFactory"]

_log = get_logger("propagator.daemon")
Connection = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

# What a refreshed sandbox raises at a writer: its table or propagator's history gone.
_VANISHED = (SchemaError, pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)


class Writer(Protocol):
    """What the pipeline needs of a writer; every method runs in a worker thread."""

    def apply(self, batch: Batch, fence: Fence) -> BatchResult: ...

    def reconcile(self, source: ReconcileSource, fence: Fence) -> ReconcileReport: ...

    def connected(self) -> bool: ...

    def cancel(self) -> None:
        """Cancel a running statement from another thread (its transaction rolls back)."""

    def reset(self) -> None:
        """Drop the connections; the next call opens new ones."""


WriterFactory = Callable[[int], Writer]
"""Builds the writer of lane ``n``."""


@dataclass(slots=True)
class Lane:
    """One applier: its share of the buffered keys, its batch in flight, its writer."""

    number: int
    buffer: DebounceBuffer
    writer: Writer
    in_flight: Batch | None = None
    wake: Any = field(default=None)  # asyncio.Event, created on the running loop


def _fenced(fence: Fence) -> Callable[[Connection, Any, Any], None]:
    def check(conn: Connection, _results: Any, _source: Any) -> None:
        fence(conn)

    return check


class SandboxWriter:
    """A writer on real connections: production to read, sandbox to write and record history.

    With ``shared``, production is read on the connection all writers of that
    database take turns on (holding its lock); otherwise on a connection of its own.
    """

    def __init__(
        self, settings: Settings, history: History, shared: SharedProduction | None = None
    ) -> None:
        self.settings = settings
        self.history = history
        self.shared = shared
        self.session: SyncSession | None = None
        self.context: SyncContext | None = None
        self._proved_now = False  # the context was just prepared: its keys were just proved
        self._last_used = 0.0  # monotonic time the connections last did work

    def _production(self) -> AbstractContextManager[Connection]:
        """The production connection, held for the duration of the block."""
        if self.shared is None:
            _, production, _ = self.ensure()
            return contextlib.nullcontext(production)
        return _borrowed(self.shared)

    def ensure(self) -> tuple[SyncContext, Connection, Connection]:
        if self.session is not None and not self._still_usable(self.session):
            _log.info("writer_reconnecting", reason="connection lost while idle")
            self.reset()
        if self.session is None or self.context is None:
            session = SyncSession(self.settings, application_name="propagator applier")
            try:
                sandbox = session.open_sandbox()
                if self.shared is None:
                    self.context = session.prepare()
                else:
                    with _borrowed(self.shared) as production:
                        self.context = SyncContext.from_settings(self.settings, production, sandbox)
                self._proved_now = True
                setup = self.history.setup(sandbox)
                if setup is not None and setup.applied:
                    _log.info("history_schema_ready", detail=setup.describe())
            except BaseException:
                session.close()
                raise
            self.session = session
        assert self.session.sandbox is not None
        if self.shared is not None:
            return self.context, self.shared.connection(), self.session.sandbox
        assert self.session.production is not None
        return self.context, self.session.production, self.session.sandbox

    def _still_usable(self, session: SyncSession) -> bool:
        """Whether the kept connections still work: a restarted server closed them."""
        idle = time.monotonic() - self._last_used
        own = (
            [session.sandbox] if self.shared is not None else [session.sandbox, session.production]
        )
        return all(conn is not None and usable(conn, idle) for conn in own)

    def _healing(self, work: Callable[[], T]) -> T:
        """Run ``work``; when the table or the history vanished, reconnect and set up once more.

        A recreated sandbox lacks propagator's history schema and may have a table
        of another shape: a new session re-runs the history setup and re-reads the
        table, so the retry needs no wait. A table still missing fails again, as before.
        """
        try:
            return self._used(work)
        except _VANISHED as error:
            _log.warning("sandbox_changed_reconnecting", error=str(error).splitlines()[0])
        self.reset()
        return self._used(work)

    def _used(self, work: Callable[[], T]) -> T:
        try:
            return work()
        finally:
            self._last_used = time.monotonic()

    def apply(self, batch: Batch, fence: Fence) -> BatchResult:
        return self._healing(lambda: self._apply(batch, fence))

    def _apply(self, batch: Batch, fence: Fence) -> BatchResult:
        context, production, sandbox = self.ensure()
        return converge_keys(
            context,
            production,
            sandbox,
            batch.keys,
            source="event",
            on_applied=self.history.hook(changed_at=batch.earliest_change, after=_fenced(fence)),
            production_lock=None if self.shared is None else _BorrowLock(self.shared),
        )

    def reconcile(self, source: ReconcileSource, fence: Fence) -> ReconcileReport:
        if source == "refresh":
            self.reset()  # new connections, and the refreshed table described afresh
        return self._healing(lambda: self._reconcile(source, fence))

    def _reconcile(self, source: ReconcileSource, fence: Fence) -> ReconcileReport:
        context, _, sandbox = self.ensure()
        if not self._proved_now:
            # Proved again: after a refused batch the keys may have stopped being unique.
            with self._production() as production:
                preflight(
                    production,
                    sandbox,
                    context.production,
                    context.sandbox,
                    context.spec.key_columns,
                    context.production_filter,
                )
        self._proved_now = False
        return run_reconcile(
            self.settings,
            apply=True,
            source=source,
            context=context,
            on_applied=self.history.hook(after=_fenced(fence)),
        )

    def connected(self) -> bool:
        session = self.session
        production = (
            (self.shared.connected if self.shared is not None else None)
            if session is None or session.production is None
            else not session.production.closed
        )
        return bool(
            session is not None
            and production
            and session.sandbox is not None
            and not session.sandbox.closed
        )

    def cancel(self) -> None:
        session = self.session
        if session is None:
            return
        # A shared production connection is not cancelled: its reads are short and
        # belong to other writers too.
        for conn in (session.production, session.sandbox):
            if conn is not None and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.cancel_safe(timeout=2)

    def reset(self) -> None:
        session, self.session, self.context = self.session, None, None
        if session is not None:
            with contextlib.suppress(psycopg.Error):
                session.close()


class _BorrowLock:
    """The shared connection's lock, with a broken connection replaced on entry."""

    def __init__(self, shared: SharedProduction) -> None:
        self.shared = shared

    def __enter__(self) -> None:
        self.shared.lock.acquire()

    def __exit__(self, *_: object) -> None:
        self.shared.lock.release()


@contextlib.contextmanager
def _borrowed(shared: SharedProduction) -> Iterator[Connection]:
    with shared.lock:
        yield shared.connection()
