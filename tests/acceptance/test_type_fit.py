"""A sandbox column that cannot hold production's values: checked, reported apart, skipped."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.helpers import DatabasePair, run_cli

METHODS = ["auto", "checksum", "stream"]
MISFITS = {7: Decimal("12345.67"), 500: Decimal("-10000.00"), 901: Decimal("99999.99")}
IMPOSSIBLE = (
    "mapping stage -> fab_order: text → numeric(12,2) cannot be stored: text values are not "
    "numbers; add a transform that yields numbers (:decimal, :int or :float)"
)


def narrowed(databases: DatabasePair, count: int) -> None:
    """Sandbox fab_order is numeric(6,2); production's values fit but for the three MISFITS."""
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN fab_order TYPE numeric(6,2)")
    databases.production.insert_jobs(
        (i, "A", MISFITS.get(i, Decimal(i % 9000) + Decimal("0.25"))) for i in range(1, count + 1)
    )
    databases.sandbox.insert_jobs((i, "A", 0) for i in range(1, count + 1))


def test_check_counts_the_values_a_narrowing_column_cannot_hold(databases: DatabasePair) -> None:
    """check names the narrowing, the count and examples by key, and exits 4."""
    narrowed(databases, 1000)
    result = run_cli(["check"], databases.env())
    assert result.returncode == 4, result.stdout + result.stderr
    assert (
        "⚠ mapping fab_order -> fab_order: numeric(12,2) → numeric(6,2) narrows: 3 of 1,000 "
        "values do not fit (e.g. 7-A: 12345.67, 500-A: -10000.00, 901-A: 99999.99)"
    ) in result.stdout.splitlines()


def test_check_passes_a_narrowing_every_value_fits(databases: DatabasePair) -> None:
    """A narrowing whose values all fit is a pass that says it was counted."""
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN stage TYPE varchar(5)")
    databases.production.insert_jobs([(1, "A", 1, None, "  cut "), (2, "A", 2, None, None)])
    env = databases.env(PROPAGATOR_FIELD_MAPPINGS="fab_order,stage->stage:strip")
    result = run_cli(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "✓ mapping fab_order -> fab_order: numeric(12,2) → numeric(12,2)" in lines
    assert (
        "✓ mapping stage -> stage (strip): text → character varying(5) narrows; all 1 values fit"
    ) in lines


@pytest.mark.parametrize("method", METHODS)
def test_the_dry_run_lists_unfit_rows_apart_from_the_updates(
    databases: DatabasePair, method: str
) -> None:
    """Every method reports the three rows under their own heading, not as updates; exit 4."""
    narrowed(databases, 1000)
    result = run_cli(["reconcile", "--method", method], databases.env())
    assert result.returncode == 4, result.stdout + result.stderr
    assert "fab_order Updates Needed (997):" in result.stdout
    assert "Values the Sandbox Cannot Hold (3, not written):" in result.stdout
    assert "  - 7-A: fab_order 0.00 → 12345.67 (fab_order 12345.67 does not fit numeric(6,2))" in (
        result.stdout
    )
    assert set(databases.sandbox.fab_orders().values()) == {Decimal(0)}


@pytest.mark.parametrize("method", METHODS)
def test_apply_writes_the_others_and_skips_the_unfit_rows(
    databases: DatabasePair, method: str
) -> None:
    """--apply writes every other row, leaves the three untouched, reports them, exits 4."""
    narrowed(databases, 1000)
    result = run_cli(
        ["reconcile", "--apply", "--method", method, "--format", "json"], databases.env()
    )
    assert result.returncode == 4, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["statistics"]["unfit"] == 3
    assert document["statistics"]["updated"] == 997
    assert sorted(row["label"] for row in document["unfit"]) == ["500-A", "7-A", "901-A"]
    written = databases.sandbox.fab_orders()
    production = databases.production.fab_orders()
    assert {key for key, value in written.items() if value != production[key]} == {
        (job, "A") for job in MISFITS
    }
    assert all(written[(job, "A")] == 0 for job in MISFITS)


@pytest.mark.slow
def test_three_misfits_in_100_000_rows(databases: DatabasePair) -> None:
    """check names 3 of 100,000; the dry run sets them apart; --apply writes the rest, exit 4."""
    narrowed(databases, 100_000)
    check = run_cli(["check"], databases.env())
    assert check.returncode == 4
    assert "narrows: 3 of 100,000 values do not fit (e.g. 7-A: 12345.67" in check.stdout
    dry = run_cli(["reconcile"], databases.env())
    assert dry.returncode == 4
    assert "fab_order Updates Needed (99997):" in dry.stdout
    assert "Values the Sandbox Cannot Hold (3, not written):" in dry.stdout
    applied = run_cli(["reconcile", "--apply"], databases.env())
    assert applied.returncode == 4, applied.stdout + applied.stderr
    assert "Values the Sandbox Cannot Hold (3, not written):" in applied.stdout
    written = databases.sandbox.fab_orders()
    production = databases.production.fab_orders()
    assert sum(written[key] == production[key] for key in production) == 99_997
    again = run_cli(["reconcile", "--check"], databases.env())
    assert "fab_order Updates Needed" not in again.stdout  # nothing half-written, nothing left


@pytest.mark.parametrize(
    "command",
    [
        ["reconcile", "--method", method, *apply]
        for method in METHODS
        for apply in ([], ["--apply"])
    ],
)
def test_an_impossible_pair_is_refused_before_anything_is_read(
    databases: DatabasePair, command: list[str]
) -> None:
    """text into numeric: every reconcile exits 2 with one line naming the fix; nothing written."""
    databases.production.insert_jobs([(1, "A", 5, None, "fab")])
    databases.sandbox.insert_jobs([(1, "A", 0)])
    result = run_cli(command, databases.env(PROPAGATOR_FIELD_MAPPINGS="stage->fab_order"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"propagator: error: {IMPOSSIBLE}"]
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal(0)}


def test_run_refuses_an_impossible_pair_at_start(databases: DatabasePair) -> None:
    """propagator run exits 2 with the same line before it starts; nothing is written."""
    databases.production.insert_jobs([(1, "A", 5, None, "fab")])
    databases.sandbox.insert_jobs([(1, "A", 0)])
    result = run_cli(
        ["run"], databases.env(PROPAGATOR_FIELD_MAPPINGS="stage->fab_order"), timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == f"propagator: error: {IMPOSSIBLE}"
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal(0)}


def test_check_refuses_an_impossible_pair_in_one_line(databases: DatabasePair) -> None:
    """check marks text into numeric with ✗, names the fix and exits 2."""
    result = run_cli(["check"], databases.env(PROPAGATOR_FIELD_MAPPINGS="stage->fab_order"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"✗ {IMPOSSIBLE}"


def test_check_counts_only_the_rows_the_production_filter_keeps(databases: DatabasePair) -> None:
    """The server-side count honours production_filter: a filtered-out misfit is not counted."""
    narrowed(databases, 1000)
    result = run_cli(["check"], databases.env(PROPAGATOR_PRODUCTION_FILTER="job <> 7"))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "narrows: 2 of 999 values do not fit (e.g. 500-A: -10000.00, 901-A: 99999.99)" in (
        result.stdout
    )
