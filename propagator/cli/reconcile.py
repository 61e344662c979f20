"""``propagator reconcile``: compare both tables in full; dry run unless ``--apply``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from propagator.core.report import RULE, ReconcileReport, render_json, render_text
from propagator.errors import DatabaseUnavailableError, ExitCode
from propagator.services.history import History
from propagator.services.reconcile import ReconcileMethod, run_reconcile
from propagator.services.sync import SyncSession
from propagator.settings import Settings, load_settings

__all__ = ["run"]


class _Printer:
    """Progress lines for people; silent in JSON mode so stdout stays one document."""

    def __init__(self, enabled: bool, stream: TextIO = sys.stdout) -> None:
        self.enabled = enabled
        self.stream = stream

    def __call__(self, line: str = "") -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None

    def show(count: int) -> None:
        print(f"\r  compared {count:,} production rows…", end="", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    limit = args.limit if args.limit is not None else settings.report_limit
    if args.format == "json" and args.limit is None:
        limit = max(limit, 1000)
    report = execute(
        settings,
        apply=args.apply,
        limit=limit,
        text=args.format == "text",
        method=getattr(args, "method", None),
    )
    if args.format == "json":
        print(render_json(report))
    else:
        print(render_text(report))
    if report.statistics.failed:
        return ExitCode.ROWS_FAILED
    if args.check and report.differences:
        return ExitCode.DIFFERENCES_FOUND
    return ExitCode.OK


def execute(
    settings: Settings,
    *,
    apply: bool,
    limit: int,
    text: bool,
    method: ReconcileMethod | None = None,
) -> ReconcileReport:
    """Run one reconcile, printing the seed's progress lines when ``text``."""
    say = _Printer(text)
    say(RULE)
    say("MAP PRODUCTION → SANDBOX")
    say(RULE)
    say()
    if not apply:
        say("⚠ DRY RUN MODE - No changes will be made")
        say()
    say("Testing database connections...")
    with SyncSession(settings, purpose="reconcile") as session:
        for side, opener in (
            ("Production", session.open_production),
            ("Sandbox", session.open_sandbox),
        ):
            try:
                opener()
            except DatabaseUnavailableError:
                say(f"✗ {side} database connection failed")
                raise
            say(f"✓ {side} database connection successful")
        context = session.prepare()
        history = History(settings) if apply else None
        if history is not None and session.sandbox is not None:
            history.setup(session.sandbox)  # idempotent; every applied change is recorded
        say()
        say("Fetching jobs from databases...")
        report = run_reconcile(
            settings,
            apply=apply,
            source="reconcile",
            context=context,
            on_applied=history.hook() if history is not None else None,
            method=method,
            progress=_progress(text and sys.stderr.isatty()),
            limit=limit,
        )
        if text and sys.stderr.isatty():
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
        say(f"✓ Fetched {report.statistics.production_rows} jobs from Production database")
        say(f"✓ Fetched {report.statistics.sandbox_rows} jobs from Sandbox database")
        if report.fallback_reason:
            say(f"⚠ Compared by streaming both tables: {report.fallback_reason}")
        say()
        say("Mapping jobs...")
    return report
