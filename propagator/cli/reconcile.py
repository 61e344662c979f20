"""``propagator reconcile``: compare both tables in full; dry run unless ``--apply``.

With ``[[mappings]]`` each selected mapping is reconciled in turn under its name,
then one total line (in JSON: one document of every report and the total).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, TextIO

from propagator.cli.per_mapping import Outcome, heading, run_each, worst
from propagator.core.report import RULE, ReconcileReport, render_json, render_text
from propagator.errors import DatabaseUnavailableError, ExitCode
from propagator.services.both_sides import on_both
from propagator.services.reconcile import ReconcileMethod, run_reconcile
from propagator.services.sync import SyncSession
from propagator.settings import Settings, load_configuration

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
    configuration = load_configuration(args.config, selection=args.mappings)
    text = args.format == "text"
    outcomes = run_each(configuration, lambda settings: _reconcile(settings, args), headings=text)
    if not configuration.named:
        (report,) = (outcome.result for outcome in outcomes)
        assert report is not None
        if not text:
            print(render_json(report))
        return _exit_code(report, check=args.check)
    if text:
        print()
        print(heading(_total_line(outcomes)))
    else:
        print(json.dumps(_document(outcomes, check=args.check), indent=2, ensure_ascii=False))
    return worst(outcome.exit_code(partial(_exit_code, check=args.check)) for outcome in outcomes)


def _reconcile(settings: Settings, args: argparse.Namespace) -> ReconcileReport:
    """One mapping's reconcile, its text report printed (JSON waits for every mapping)."""
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
    if args.format == "text":
        print(render_text(report), flush=True)
    return report


def _exit_code(report: ReconcileReport, *, check: bool) -> int:
    # Busy rows (held by a sandbox user) are not failures: they are reported and left to
    # the daemon or the next run, and a later --check still finds them different.
    if report.statistics.failed:
        return ExitCode.ROWS_FAILED
    if check and report.differences:
        return ExitCode.DIFFERENCES_FOUND
    return ExitCode.OK


def _totals(outcomes: list[Outcome[ReconcileReport]]) -> dict[str, Any]:
    """The figures over every mapping that ran, and the mappings that ended in an error."""
    reports = [outcome.result for outcome in outcomes if outcome.result is not None]
    return {
        "mappings": len(outcomes),
        "in_error": [outcome.name for outcome in outcomes if outcome.error is not None],
        "rows_compared": sum(report.statistics.production_rows for report in reports),
        "rows_with_differences": sum(report.differences for report in reports),
        "updated": sum(report.statistics.updated for report in reports),
        "failed": sum(report.statistics.failed for report in reports),
        "busy": sum(report.statistics.busy for report in reports),
    }


def _total_line(outcomes: list[Outcome[ReconcileReport]]) -> str:
    totals = _totals(outcomes)
    mappings = _count(totals["mappings"], "mapping")
    if totals["in_error"]:
        mappings += f" ({len(totals['in_error'])} in error: {', '.join(totals['in_error'])})"
    return (
        f"total: {mappings}, {_count(totals['rows_compared'], 'row')} compared, "
        f"{_count(totals['rows_with_differences'], 'difference')}, "
        f"{totals['updated']:,} updated, {totals['failed']:,} failed"
        + (f", {totals['busy']:,} busy (retry later)" if totals["busy"] else "")
    )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _document(outcomes: list[Outcome[ReconcileReport]], *, check: bool) -> dict[str, Any]:
    """Named mappings as one JSON document: each mapping's report (or error), then the total."""
    entries: list[dict[str, Any]] = []
    for outcome in outcomes:
        entry: dict[str, Any] = {
            "mapping": outcome.name,
            "exit_code": outcome.exit_code(partial(_exit_code, check=check)),
        }
        if outcome.result is not None:
            entry["report"] = json.loads(render_json(outcome.result))
        else:
            entry["error"] = str(outcome.error)
        entries.append(entry)
    total = _totals(outcomes)
    total["exit_code"] = worst(entry["exit_code"] for entry in entries)
    return {"mappings": entries, "total": total}


def _refusal(open_side: Callable[[], object]) -> Exception | None:
    """Why ``open_side`` could not connect, or None once it has."""
    try:
        open_side()
    except Exception as error:  # raised by the caller, in the order of the sides
        return error
    return None


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
        # Both at once; reported in order, as if tried in turn.
        failures = on_both(
            lambda: _refusal(session.open_production), lambda: _refusal(session.open_sandbox)
        )
        for side, failure in zip(("Production", "Sandbox"), failures, strict=True):
            if isinstance(failure, DatabaseUnavailableError):
                say(f"✗ {side} database connection failed")
            if failure is not None:
                raise failure
            say(f"✓ {side} database connection successful")
        context = session.prepare()
        history = None
        if apply:  # a dry run records nothing: the history's modules are not even loaded
            from propagator.services.history import History

            history = History(settings)
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
