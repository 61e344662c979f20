"""The fit rule on real servers: the server-side count, ``fits`` and the sandbox agree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from propagator import map_production_fab_order_to_sandbox
from propagator.adapters.writes import apply_values
from propagator.core.typefit import fits
from propagator.errors import ExitCode, SettingsMismatchError
from propagator.services.database_mapping import create_engine
from propagator.services.sync import SyncSession, converge_keys
from propagator.services.typefit import count_misfits, decisions
from propagator.settings import load_settings
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import daemon_settings, install_triggers, seed

EDGES: dict[str, tuple[str, str, list[Any]]] = {
    # production column: (production type, sandbox type, values)
    "amount": (
        "numeric",
        "numeric(6,2)",
        [
            Decimal("9999.99"),
            Decimal("9999.995"),
            Decimal("-9999.994"),
            Decimal("12345"),
            Decimal("NaN"),
            Decimal("0.001"),
            None,
        ],
    ),
    "big": ("bigint", "integer", [2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 0, None, 5]),
    "label": (
        "text",
        "varchar(3)",
        ["abc", "abcd", "ab  ", "abc   ", " a b ", "\u00e9t\u00e9", "", None],
    ),
    "ratio": ("double precision", "numeric(4,2)", [99.99, 99.995, -0.5, 1e300, 100.0, 0.0, None]),
    "whole": (
        "numeric",
        "smallint",
        [
            Decimal("5"),
            Decimal("5.00"),
            Decimal("32768"),
            Decimal("-32768"),
            None,
            Decimal("7"),
            Decimal("1"),
        ],
    ),
}


def _edge_tables(databases: DatabasePair) -> int:
    """Both ``edge`` tables, the sandbox's columns narrower; returns the number of rows."""
    rows = max(len(values) for _, _, values in EDGES.values())
    for db, position in ((databases.production, 0), (databases.sandbox, 1)):
        columns = ", ".join(f"{name} {types[position]}" for name, types in EDGES.items())
        db.execute(f"CREATE TABLE edge (job int, release text, {columns}, UNIQUE (job, release))")
    names = ", ".join(EDGES)
    with databases.production.connect() as conn:
        for i in range(rows):
            values = [v[2][i] if i < len(v[2]) else None for v in EDGES.values()]
            holders = ", ".join(["%s"] * len(values))
            conn.execute(
                f"INSERT INTO edge (job, release, {names}) VALUES (%s, 'A', {holders})",
                [i, *values],
            )
    databases.sandbox.execute(
        f"INSERT INTO edge (job, release) SELECT g, 'A' FROM generate_series(0, {rows - 1}) g"
    )
    return rows


@pytest.mark.parametrize("column", list(EDGES))
def test_the_count_fits_and_the_sandbox_agree_on_every_edge(
    databases: DatabasePair, column: str
) -> None:
    """The values the server counts, the ones ``fits`` refuses and the ones the sandbox rejects
    are the same keys."""
    _edge_tables(databases)
    transform = ":strip" if column == "label" else ""
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        production_table="edge",
        sandbox_table="edge",
        field_mappings=f"{column}->{column}{transform}",
    )
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        [(mapping, decision)] = decisions(context)
        counted = count_misfits(session.production, context, mapping, decision, limit=100)
        rows = session.production.execute(f"SELECT job, release, {column} FROM edge").fetchall()
        values = [((job, release), mapping.apply(value)) for job, release, value in rows]
        refused = {key for key, value in values if not fits(value, decision.target)}
        outcome = apply_values(
            session.sandbox,
            context.sandbox,
            ("job", "release"),
            (column,),
            [(key, [value]) for key, value in values if value is not None],
        )
    assert counted is not None
    assert refused, "every edge list holds a value that does not fit"
    assert {key for key, _ in counted.examples} == refused
    assert counted.misfits == len(refused)
    assert {failure.key for failure in outcome.failures} == refused


def test_an_event_batch_skips_a_row_that_does_not_fit(databases: DatabasePair) -> None:
    """converge_keys (the daemon's batches) writes the rest and reports the row as failed."""
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN fab_order TYPE numeric(6,2)")
    databases.production.insert_jobs([(1, "A", Decimal("12345.67")), (2, "A", Decimal("2.50"))])
    databases.sandbox.insert_jobs([(1, "A", 0), (2, "A", 0)])
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
    )
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        result = converge_keys(context, session.production, session.sandbox, [(1, "A"), (2, "A")])
    assert result.updated == [(2, "A")]
    assert (result.statistics.failed, result.statistics.unfit) == (1, 1)
    [failure] = result.statistics.failures
    assert (failure.key, failure.kind) == ((1, "A"), "unfit")
    assert failure.error == "fab_order 12345.67 does not fit numeric(6,2)"
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal(0), (2, "A"): Decimal("2.50")}


def test_the_daemon_never_sends_an_event_row_that_does_not_fit(databases: DatabasePair) -> None:
    """An event batch writes the row that fits and counts the other as failed, unsent."""
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN fab_order TYPE numeric(6,2)")
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 20)
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        databases.production.execute(
            "UPDATE jobs SET fab_order = CASE job WHEN 3 THEN 12345.67 ELSE 55 END "
            "WHERE job IN (3, 4)"
        )
        wait_until(
            lambda: running.metric("propagator_rows_failed_total", source="event") == 1,
            what="the row that does not fit counted as failed",
        )
        # Keys 3 and 4 may fall to different lanes, so no single batch is asserted on.
        wait_until(lambda: databases.sandbox.fab_orders()[(4, "A")] == 55, what="the row that fits")
        assert running.metric("propagator_rows_failed_total", source="event") == 1
    assert databases.sandbox.fab_orders()[(4, "A")] == 55
    assert databases.sandbox.fab_orders()[(3, "A")] == 3


def test_the_one_call_api_writes_what_fits_and_reports_the_rest(databases: DatabasePair) -> None:
    """map_production_fab_order_to_sandbox: fitting values written, misfits reported, not sent."""
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN fab_order TYPE numeric(6,2)")
    databases.production.insert_jobs([(1, "A", Decimal("12.50")), (2, "A", Decimal("12345.67"))])
    databases.sandbox.insert_jobs([(1, "A", 0), (2, "A", 0)])
    engines = (create_engine(databases.production.url), create_engine(databases.sandbox.url))
    lines: list[str] = []
    try:
        stats = map_production_fab_order_to_sandbox(
            *engines,
            dry_run=False,
            log_callback=lines.append,
            settings=load_settings(
                production_database_url=databases.production.url,
                sandbox_database_url=databases.sandbox.url,
            ),
        )
    finally:
        for engine in engines:
            engine.dispose()
    assert (stats.updated, stats.unfit, stats.failed) == (1, 1, 1)
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal("12.50"), (2, "A"): Decimal(0)}
    assert [line.split(":")[0] for line in lines if "not written" in line] == [
        "Job 2-A not written"
    ]


def test_the_one_call_api_refuses_an_impossible_pair(databases: DatabasePair) -> None:
    """text into numeric through the seed's API: a settings error (exit 2), nothing written."""
    databases.production.insert_jobs([(1, "A", 5, None, "fab")])
    databases.sandbox.insert_jobs([(1, "A", 0)])
    engines = (create_engine(databases.production.url), create_engine(databases.sandbox.url))
    try:
        with pytest.raises(SettingsMismatchError) as refused:
            map_production_fab_order_to_sandbox(
                *engines,
                dry_run=False,
                settings=load_settings(
                    production_database_url=databases.production.url,
                    sandbox_database_url=databases.sandbox.url,
                    field_mappings="stage->fab_order",
                ),
            )
    finally:
        for engine in engines:
            engine.dispose()
    assert refused.value.exit_code == ExitCode.USAGE
    assert "cannot be stored: text values are not numbers" in str(refused.value)
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal(0)}
