"""The reconcile report: the seed's text layout and an exact JSON document."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.plan import FieldChange, JobMappingResult, MatchStatus, RowFailure
from propagator.core.report import RULE, ReconcileReport, json_value, render_json, render_text

SEED_DRY_RUN = """
================================================================================
MAPPING SUMMARY
================================================================================

Database Stats:
  Production Jobs: 1250
  Sandbox Jobs: 890

Mapping Results:
  Matched: 850
  Not Found in Sandbox: 400
  fab_order Differences: 42

fab_order Updates Needed (42):
  - 10001-A: 500.0 → 510.0
  - 10002-B: 750.0 → 800.0
  ... and 40 more
"""


def changed(job: int, release: str, old: Any, new: Any, field: str = "fab_order") -> Any:
    return JobMappingResult((job, release), MatchStatus.MATCHED, (FieldChange(field, old, new),))


def seed_report(*, dry_run: bool = True, limit: int = 2) -> ReconcileReport:
    """The seed's example run: 1250 production jobs, 890 sandbox jobs, 42 differences."""
    report = ReconcileReport(
        dry_run=dry_run,
        production="postgresql://app:***@prod/jobs",
        sandbox="postgresql://app:***@sandbox/jobs",
        fields=("fab_order",),
        limit=limit,
    )
    stats = report.statistics
    stats.production_rows, stats.sandbox_rows = 1250, 890
    results = [changed(10001, "A", 500.0, 510.0), changed(10002, "B", 750.0, 800.0)]
    results += [changed(20000 + n, "C", float(n), float(n + 1)) for n in range(40)]
    results += [JobMappingResult((30000 + n, "D"), MatchStatus.MATCHED) for n in range(808)]
    missing = MatchStatus.NOT_FOUND_IN_SANDBOX
    results += [JobMappingResult((40000 + n, "E"), missing) for n in range(400)]
    for result in results:
        stats.record(result)
        report.note(result)
    return report


def test_dry_run_text_matches_the_seed_summary() -> None:
    """The summary block is the seed's example output, line for line."""
    text = render_text(seed_report())
    assert text.startswith(SEED_DRY_RUN)


def test_dry_run_text_has_the_seed_apply_section_and_ending() -> None:
    """The apply section lists [DRY RUN] jobs, the total, and ends with the seed's line."""
    lines = render_text(seed_report()).splitlines()
    apply_section = lines[lines.index("Applying Updates...") :]
    assert apply_section[:4] == [
        "Applying Updates...",
        "Total updates to apply: 42",
        "  [DRY RUN] Job 10001-A: fab_order 500.0 → 510.0",
        "  [DRY RUN] Job 10002-B: fab_order 750.0 → 800.0",
    ]
    assert "  ... (42 total)" in apply_section
    assert apply_section[-2:] == ["✓ Dry run completed successfully", RULE]


def test_not_found_keys_are_listed_with_a_bounded_sample() -> None:
    """Keys missing from the sandbox get their own bounded section."""
    lines = render_text(seed_report()).splitlines()
    start = lines.index("Not Found in Sandbox (400):")
    assert lines[start + 1 : start + 4] == ["  - 40000-E", "  - 40001-E", "  ... and 398 more"]


def test_applied_run_reports_updates_and_duration() -> None:
    """An applied run marks jobs with ✓ and ends with the count and the time taken."""
    report = seed_report(dry_run=False)
    report.statistics.updated = 42
    report.statistics.duration_seconds = 1.234
    text = render_text(report)
    assert "  ✓ Job 10001-A: fab_order 500.0 → 510.0" in text
    assert "[DRY RUN]" not in text
    assert "✓ Applied 42 updates in 1.23s" in text


def test_rejected_rows_are_marked_and_counted() -> None:
    """Rows the sandbox refused are marked ✗ with their error and the run is not ok."""
    report = seed_report(dry_run=False)
    stats = report.statistics
    stats.updated, stats.failed = 41, 1
    stats.failures.append(RowFailure((10002, "B"), "value out of range"))
    text = render_text(report)
    assert "  ✗ Job 10002-B: fab_order 750.0 → 800.0" in text
    assert "  ✗ Job 10002-B rejected by the sandbox: value out of range" in text
    assert "✗ Applied 41 updates; 1 rows were rejected by the sandbox" in text
    assert not report.ok


def test_not_found_in_production_appears_only_when_nonzero() -> None:
    """Sandbox-only keys add a line the seed did not need when there are none."""
    report = seed_report()
    assert "Not Found in Production" not in render_text(report)
    report.statistics.record(JobMappingResult((1, "Z"), MatchStatus.NOT_FOUND_IN_PRODUCTION))
    assert "  Not Found in Production: 1" in render_text(report)


def test_every_field_gets_a_difference_line() -> None:
    """Each mapped field has its Differences line, zero included, and its own examples."""
    report = ReconcileReport(True, "p", "s", ("fab_order", "paint_color"), limit=5)
    for result in (changed(1, "A", None, 5), changed(2, "A", "red", "blue", "paint_color")):
        report.statistics.record(result)
        report.note(result)
    lines = render_text(report).splitlines()
    assert "  fab_order Differences: 1" in lines
    assert "  paint_color Differences: 1" in lines
    assert "  - 1-A: NULL → 5" in lines
    assert "  - 2-A: red → blue" in lines
    assert not any("... and" in line for line in lines)


def test_examples_stay_bounded() -> None:
    """However many rows differ, the report keeps at most ``limit`` examples of each kind."""
    report = seed_report(limit=3)
    assert len(report.changed_rows) == 3
    assert len(report.examples["fab_order"]) == 3
    assert len(report.not_found_examples) == 3
    assert report.differences == 42


def test_json_parses_with_exact_figures() -> None:
    """The JSON document parses and carries the exact figures of the run."""
    report = seed_report()
    report.started_at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    document = json.loads(render_json(report))
    assert document["dry_run"] is True
    assert document["method"] == "stream"
    assert document["started_at"] == "2024-05-01T12:00:00+00:00"
    assert document["statistics"] == {
        "production_rows": 1250,
        "sandbox_rows": 890,
        "matched": 850,
        "not_found_in_sandbox": 400,
        "not_found_in_production": 0,
        "rows_with_differences": 42,
        "differences": {"fab_order": 42},
        "updated": 0,
        "failed": 0,
        "unfit": 0,
        "busy": 0,
        "duration_seconds": 0.0,
    }
    assert document["changes"][0] == {
        "key": [10001, "A"],
        "label": "10001-A",
        "changes": [{"field": "fab_order", "old": 500.0, "new": 510.0}],
    }
    assert document["changes_truncated"] is True
    assert document["not_found_in_sandbox"] == [[40000, "E"], [40001, "E"]]
    assert document["failures"] == []


def test_json_writes_decimals_as_numbers() -> None:
    """Decimal values from numeric columns are JSON numbers, exactly."""
    report = ReconcileReport(True, "p", "s", ("fab_order",))
    result = changed(1, "A", Decimal("500.00"), Decimal("510.25"))
    report.statistics.record(result)
    report.note(result)
    text = render_json(report)
    change = json.loads(text, parse_float=Decimal)["changes"][0]["changes"][0]
    assert change == {"field": "fab_order", "old": Decimal("500.0"), "new": Decimal("510.25")}
    assert '"old": 500.0' in text


def test_json_failures_carry_key_label_and_error() -> None:
    """Rejected rows appear in the JSON with their key, label, kind and error."""
    report = ReconcileReport(False, "p", "s", ("fab_order",))
    report.statistics.failures.append(RowFailure((7, "Q"), "numeric field overflow"))
    failures = json.loads(render_json(report))["failures"]
    assert failures == [
        {"key": [7, "Q"], "label": "7-Q", "kind": "rejected", "error": "numeric field overflow"}
    ]


def test_json_keeps_unicode_readable() -> None:
    """Text is written as itself, not as escape sequences."""
    report = ReconcileReport(True, "p", "s", ("paint_color",))
    result = changed(1, "日本", "rouge", "bleu é", "paint_color")
    report.statistics.record(result)
    report.note(result)
    assert "日本" in render_json(report)
    assert "bleu é" in render_json(report)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (7, 7),
        ("x", "x"),
        (1.5, 1.5),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (Decimal("500.00"), 500.0),
        (Decimal("500"), 500),
        (Decimal("0.1"), 0.1),
        (Decimal("NaN"), "NaN"),
        (Decimal("12345678901234567890.123"), "12345678901234567890.123"),
        (date(2024, 1, 2), "2024-01-02"),
        (timedelta(seconds=90), 90.0),
        (b"\x01\xff", "\\x01ff"),
        ({"a": 1}, {"a": 1}),
    ],
)
def test_json_value(value: Any, expected: Any) -> None:
    """Values become JSON-safe; decimals stay numbers only when a float holds them exactly."""
    assert json_value(value) == expected


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_json_value_never_loses_a_decimal(value: Decimal) -> None:
    """Every Decimal survives JSON: as a number equal to it, or as its exact text."""
    written = json.loads(json.dumps(json_value(value)), parse_float=Decimal)
    if isinstance(written, str):
        assert written == str(value)
    else:
        assert Decimal(written) == value
