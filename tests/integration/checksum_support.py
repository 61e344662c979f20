"""Reconcile runs of one production/sandbox pair, and what two runs must agree on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import psycopg

from propagator.adapters.postgres import connect
from propagator.core.identifiers import parse_qualified_name
from propagator.core.mapping import DEFAULT_KEY_COLUMNS, FieldMapping, MappingSpec
from propagator.core.plan import JobMappingResult
from propagator.core.report import ReconcileReport
from propagator.services.checksum import reconcile_checksum
from propagator.services.context import SyncContext
from propagator.services.reconcile import ReconcileMethod, reconcile
from tests.helpers import Database

__all__ = ["FAB_ORDER", "Runner", "Side", "comparable"]

Side = Literal["production", "sandbox"]
FAB_ORDER = MappingSpec(DEFAULT_KEY_COLUMNS, (FieldMapping("fab_order", "fab_order"),))


class Runner:
    """Runs reconciles of one production/sandbox pair and closes what they opened."""

    def __init__(
        self,
        production: Database,
        sandbox: Database,
        spec: MappingSpec = FAB_ORDER,
        *,
        production_table: str = "public.jobs",
        sandbox_table: str = "public.jobs",
        production_filter: str | None = None,
        parallel_workers: int = 0,
    ) -> None:
        self.urls = {"production": production.url, "sandbox": sandbox.url}
        self.opened: list[psycopg.Connection[tuple[Any, ...]]] = []
        self.context = SyncContext.prepare(
            self.open("production"),
            self.open("sandbox"),
            spec,
            parse_qualified_name(production_table),
            parse_qualified_name(sandbox_table),
            production_filter=production_filter,
            batch_size=50,
            parallel_workers=parallel_workers,
        )

    def open(self, side: Side) -> psycopg.Connection[tuple[Any, ...]]:
        conn = connect(self.urls[side], side)
        self.opened.append(conn)
        return conn

    def report(self, *, apply: bool = False) -> ReconcileReport:
        return ReconcileReport(
            dry_run=not apply,
            production="production",
            sandbox="sandbox",
            fields=self.context.spec.target_columns,
            limit=10_000,
        )

    def run(
        self, method: ReconcileMethod, *, apply: bool = False, **options: Any
    ) -> tuple[ReconcileReport, list[JobMappingResult]]:
        report = self.report(apply=apply)
        found: list[JobMappingResult] = []
        if options:
            done = reconcile_checksum(
                self.context,
                self.open,
                report,
                apply=apply,
                on_difference=found.append,
                strict=True,
                **options,
            )
            assert done
        else:
            reconcile(
                self.context,
                self.open,
                report,
                apply=apply,
                method=method,
                on_difference=found.append,
            )
        return report, found

    def close(self) -> None:
        for conn in self.opened:
            conn.close()


def comparable(report: ReconcileReport, found: Sequence[JobMappingResult]) -> dict[str, Any]:
    """What must be identical between the two methods: statistics, plan, samples."""
    figures = report.statistics.to_dict()
    figures.pop("duration_seconds")
    return {
        "statistics": figures,
        "plan": [
            (r.key, r.status, [(c.field, repr(c.old), repr(c.new)) for c in r.changes])
            for r in found
        ],
        "not_found_in_sandbox": report.not_found_examples,
        "failures": [(f.key, f.error) for f in report.statistics.failures],
    }
