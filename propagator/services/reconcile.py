"""The full reconcile: compare both tables and, when applying, converge every difference.

``reconcile`` chooses the compare (segment checksums where they apply, both
tables streamed otherwise) on connections it is given. ``run_reconcile`` is
the one entry every caller uses (``propagator reconcile``, the daemon's
catch-up and periodic reconcile, the seed's one-call API): it builds the
report, opens and always closes its connections, and runs ``reconcile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

import psycopg

from propagator.adapters.connections import Connection, open_connection
from propagator.core.plan import DuplicateKeyError, JobMappingResult
from propagator.core.redact import mask_url
from propagator.core.report import ReconcileReport
from propagator.errors import Side
from propagator.services.checksum import reconcile_checksum
from propagator.services.context import (
    AppliedHook,
    ConnectionOpener,
    ProgressCallback,
    Source,
    SyncContext,
)
from propagator.services.preflight import non_unique_error
from propagator.services.streaming import reconcile_stream
from propagator.services.typefit import refuse_impossible
from propagator.settings import Settings

__all__ = ["Databases", "ReconcileMethod", "reconcile", "run_reconcile"]

ReconcileMethod = Literal["auto", "checksum", "stream"]


@dataclass(frozen=True, slots=True)
class Databases:
    """Where a reconcile's connections come from, and how its report names each database.

    ``connect`` gives a connection for the time the reconcile needs it (the
    context manager gives it back); ``production`` and ``sandbox`` locate the
    databases for people, passwords masked. By default both come from the
    settings (``Databases.configured``); the seed's API lends its engines' pools.
    """

    connect: Callable[[Side], AbstractContextManager[Connection]]
    production: str
    sandbox: str

    @classmethod
    def configured(cls, settings: Settings, purpose: str) -> Databases:
        """The configured databases, each connection named ``propagator <purpose>``."""
        return cls(
            lambda side: _closing(open_connection(settings, side, purpose)),
            mask_url(settings.production_url()),
            mask_url(settings.sandbox_url()),
        )


@contextmanager
def _closing(conn: Connection) -> Iterator[Connection]:
    try:
        yield conn
    finally:
        with suppress(psycopg.Error):
            conn.close()


def run_reconcile(
    settings: Settings,
    *,
    apply: bool,
    source: Source,
    context: SyncContext | None = None,
    on_applied: AppliedHook | None = None,
    method: ReconcileMethod | None = None,
    progress: ProgressCallback | None = None,
    purpose: str | None = None,
    limit: int | None = None,
    on_difference: Callable[[JobMappingResult], None] | None = None,
    databases: Databases | None = None,
) -> ReconcileReport:
    """Reconcile the configured tables (dry run unless ``apply``) and return the report.

    ``context`` is a prepared context to reuse (None: one is prepared, on
    connections held until the end); ``on_applied`` runs in each sandbox
    transaction that wrote something; ``method`` defaults to
    ``settings.reconcile_method``; ``purpose`` names the connections
    (``propagator <purpose>``; None: the source). ``limit`` bounds the report's
    examples per field (None: ``settings.report_limit``); ``on_difference`` is
    given every difference found; ``databases`` replaces the configured ones.
    Every connection opened here is closed before this returns.
    """
    chosen = databases or Databases.configured(settings, source if purpose is None else purpose)
    with ExitStack() as stack:

        def connect(side: Side) -> Connection:
            return stack.enter_context(chosen.connect(side))

        if context is None:
            context = SyncContext.from_settings(settings, connect("production"), connect("sandbox"))
        report = ReconcileReport(
            dry_run=not apply,
            production=f"{context.production.name} @ {chosen.production}",
            sandbox=f"{context.sandbox.name} @ {chosen.sandbox}",
            fields=context.spec.target_columns,
            limit=settings.report_limit if limit is None else limit,
        )
        try:
            return reconcile(
                context,
                connect,
                report,
                apply=apply,
                source=source,
                on_applied=on_applied,
                progress=progress,
                on_difference=on_difference,
                method=method or settings.reconcile_method,
            )
        except DuplicateKeyError as error:  # a duplicate that appeared since the context was proved
            table = context.production if error.side == "production" else context.sandbox
            raise non_unique_error(table, context.spec.key_columns, error.key) from None


def reconcile(
    context: SyncContext,
    open_connection: ConnectionOpener,
    report: ReconcileReport,
    *,
    apply: bool,
    source: Source = "reconcile",
    on_applied: AppliedHook | None = None,
    progress: ProgressCallback | None = None,
    on_difference: Callable[[JobMappingResult], None] | None = None,
    method: ReconcileMethod = "auto",
) -> ReconcileReport:
    """Full compare of both tables; with ``apply``, converge every difference.

    Both tables are read at once (a thread each) in key order from read-only
    snapshots; differing keys are converged in batches through ``converge_keys``,
    which re-reads production so a row changed since the snapshot is never
    overwritten with a stale value. ``method`` "auto" first tries the checksum
    compare (``services.checksum``), which streams only segments whose digests
    differ, and falls back to streaming both tables (``report.fallback_reason``
    says why) where it cannot compare exactly; "checksum" refuses to fall back;
    "stream" never tries. A mapping whose sandbox column can never hold its
    values is refused first (``SettingsMismatchError``), before anything is read.
    """
    refuse_impossible(context)
    if method != "stream" and reconcile_checksum(
        context,
        open_connection,
        report,
        apply=apply,
        source=source,
        on_applied=on_applied,
        progress=progress,
        on_difference=on_difference,
        strict=method == "checksum",
    ):
        return report
    return reconcile_stream(
        context,
        open_connection,
        report,
        apply=apply,
        source=source,
        on_applied=on_applied,
        progress=progress,
        on_difference=on_difference,
    )
