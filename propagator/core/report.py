"""The reconcile report: collected while streaming, rendered as the seed's text or JSON.

Figures are exact; listed examples are bounded (``limit`` per field) so a report
over ten million rows costs no more memory than one over ten.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from propagator.core.mapping import Key, format_key
from propagator.core.plan import FieldChange, JobMappingResult, MappingStatistics, MatchStatus

__all__ = ["ReconcileReport", "json_value", "render_json", "render_text", "show_value"]

RULE = "=" * 80


@dataclass(slots=True)
class ReconcileReport:
    """Everything a reconcile found and did, with bounded examples."""

    dry_run: bool
    production: str
    sandbox: str
    fields: tuple[str, ...]
    limit: int = 10
    method: str = "stream"
    statistics: MappingStatistics = field(default_factory=MappingStatistics)
    examples: dict[str, list[tuple[Key, FieldChange]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    changed_rows: list[JobMappingResult] = field(default_factory=list)
    not_found_examples: list[Key] = field(default_factory=list)
    unfit_examples: list[JobMappingResult] = field(default_factory=list)
    fallback_reason: str | None = None
    started_at: datetime | None = None

    def note(self, result: JobMappingResult) -> None:
        """Keep a bounded sample of what a streamed result showed."""
        if result.status is MatchStatus.NOT_FOUND_IN_SANDBOX:
            if len(self.not_found_examples) < self.limit:
                self.not_found_examples.append(result.key)
            return
        if result.misfits:
            if len(self.unfit_examples) < self.limit:
                self.unfit_examples.append(result)
            return
        if not result.changes:
            return
        if len(self.changed_rows) < self.limit:
            self.changed_rows.append(result)
        for change in result.changes:
            sample = self.examples[change.field]
            if len(sample) < self.limit:
                sample.append((result.key, change))

    @property
    def differences(self) -> int:
        return self.statistics.rows_with_differences

    @property
    def ok(self) -> bool:
        return self.statistics.failed == 0


def show_value(value: Any) -> str:
    """Values as the seed prints them: ``500.0``, ``NULL``, text as is."""
    if value is None:
        return "NULL"
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return repr(value)
    return str(value)


def json_value(value: Any) -> Any:
    """A JSON-safe form: exact decimals stay numbers when a float represents them exactly."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if value.is_finite() and Decimal(repr(float(value))) == value:
            return (
                float(value)
                if value != value.to_integral_value() or "." in str(value)
                else int(value)
            )
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict | list):
        return value
    return str(value)


def _summary(report: ReconcileReport) -> list[str]:
    """The counts: rows on each side, matches, and differences per field."""
    stats = report.statistics
    lines = [
        "",
        RULE,
        "MAPPING SUMMARY",
        RULE,
        "",
        "Database Stats:",
        f"  Production Jobs: {stats.production_rows}",
        f"  Sandbox Jobs: {stats.sandbox_rows}",
        "",
        "Mapping Results:",
        f"  Matched: {stats.matched}",
        f"  Not Found in Sandbox: {stats.not_found_in_sandbox}",
    ]
    if stats.not_found_in_production:
        lines.append(f"  Not Found in Production: {stats.not_found_in_production}")
    for name in report.fields:
        lines.append(f"  {name} Differences: {stats.differences.get(name, 0)}")
    return lines


def _field_examples(report: ReconcileReport) -> list[str]:
    """Per field with differences, the sampled old → new values and how many more there are."""
    lines: list[str] = []
    for name in report.fields:
        count = report.statistics.differences.get(name, 0)
        if not count:
            continue
        lines += ["", f"{name} Updates Needed ({count}):"]
        for key, change in report.examples.get(name, []):
            lines.append(
                f"  - {format_key(key)}: {show_value(change.old)} → {show_value(change.new)}"
            )
        if count > len(report.examples.get(name, [])):
            lines.append(f"  ... and {count - len(report.examples.get(name, []))} more")
    return lines


def _sampled(heading: str, lines: list[str], total: int) -> list[str]:
    """A report section: its heading, the sampled lines, and how many more there were."""
    section = ["", heading, *lines]
    if total > len(lines):
        section.append(f"  ... and {total - len(lines)} more")
    return section


def _not_found_examples(report: ReconcileReport) -> list[str]:
    """The sampled keys missing from the sandbox, if any."""
    missing = report.statistics.not_found_in_sandbox
    if not missing:
        return []
    lines = [f"  - {format_key(key)}" for key in report.not_found_examples]
    return _sampled(f"Not Found in Sandbox ({missing}):", lines, missing)


def _unfit_examples(report: ReconcileReport) -> list[str]:
    """Rows not written because the sandbox column cannot hold a new value: apart from updates."""
    unfit = report.statistics.unfit
    if not unfit:
        return []
    lines = []
    for result in report.unfit_examples:
        values = ", ".join(
            f"{c.field} {show_value(c.old)} → {show_value(c.new)}" for c in result.misfits
        )
        lines.append(f"  - {result.label}: {values} ({result.error})")
    return _sampled(f"Values the Sandbox Cannot Hold ({unfit}, not written):", lines, unfit)


def _applied_rows(report: ReconcileReport) -> list[str]:
    """The sampled rows written (or that would be), then the sampled failures."""
    stats = report.statistics
    lines = ["", RULE, "Applying Updates...", f"Total updates to apply: {report.differences}"]
    tag = "[DRY RUN]" if report.dry_run else "✓"
    failed = {failure.key for failure in stats.failures}
    for result in report.changed_rows:
        changes = ", ".join(
            f"{c.field} {show_value(c.old)} → {show_value(c.new)}" for c in result.changes
        )
        mark = "✗" if result.key in failed else tag
        lines.append(f"  {mark} Job {result.label}: {changes}")
    if report.differences:
        lines.append(f"  ... ({report.differences} total)")
    for failure in stats.failures[: max(report.limit, 1)]:
        verb = "rejected by the sandbox" if failure.kind == "rejected" else "not applied"
        lines.append(f"  ✗ Job {format_key(failure.key)} {verb}: {failure.error}")
    if stats.failed > report.limit:
        lines.append(f"  ... and {stats.failed - report.limit} more not applied")
    return lines


def _outcome(report: ReconcileReport) -> str:
    """The closing verdict: dry run, everything applied, or how many rows failed."""
    stats = report.statistics
    if report.dry_run:
        if stats.unfit:
            return f"✗ Dry run: {stats.unfit} rows have a value the sandbox cannot hold"
        return "✓ Dry run completed successfully"
    if report.ok and stats.busy:
        return (
            f"✓ Applied {stats.updated} updates in {stats.duration_seconds:.2f}s; "
            f"{stats.busy} rows busy (held by another sandbox session), not applied: retry later"
        )
    if report.ok:
        return f"✓ Applied {stats.updated} updates in {stats.duration_seconds:.2f}s"
    if all(f.kind == "rejected" for f in stats.failures):
        return (
            f"✗ Applied {stats.updated} updates; {stats.failed} rows were rejected by the sandbox"
        )
    return f"✗ Applied {stats.updated} updates; {stats.failed} rows could not be applied"


def render_text(report: ReconcileReport) -> str:
    """The MAPPING SUMMARY and apply sections of the seed's example output."""
    lines = [
        *_summary(report),
        *_field_examples(report),
        *_not_found_examples(report),
        *_unfit_examples(report),
        *_applied_rows(report),
        "",
        _outcome(report),
        RULE,
    ]
    return "\n".join(lines)


def render_json(report: ReconcileReport) -> str:
    """One machine-readable document for scripts and CI."""
    document = {
        "dry_run": report.dry_run,
        "method": report.method,
        "fallback_reason": report.fallback_reason,
        "production": report.production,
        "sandbox": report.sandbox,
        "started_at": report.started_at.isoformat() if report.started_at else None,
        "statistics": report.statistics.to_dict(),
        "changes": [
            {
                "key": [json_value(part) for part in result.key],
                "label": result.label,
                "changes": [
                    {"field": c.field, "old": json_value(c.old), "new": json_value(c.new)}
                    for c in result.changes
                ],
            }
            for result in report.changed_rows
        ],
        "changes_truncated": report.differences > len(report.changed_rows),
        "not_found_in_sandbox": [
            [json_value(part) for part in key] for key in report.not_found_examples
        ],
        "unfit": [
            {
                "key": [json_value(part) for part in result.key],
                "label": result.label,
                "error": result.error,
                "values": [
                    {"field": c.field, "old": json_value(c.old), "new": json_value(c.new)}
                    for c in result.misfits
                ],
            }
            for result in report.unfit_examples
        ],
        "failures": [
            {
                "key": [json_value(p) for p in f.key],
                "label": format_key(f.key),
                "kind": f.kind,
                "error": f.error,
            }
            for f in report.statistics.failures
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)
