"""converge_keys, the one write path every writer shares."""

from __future__ import annotations

import gc
from decimal import Decimal

from propagator.services.sync import SyncSession, converge_keys
from propagator.settings import load_settings
from tests.helpers import DatabasePair


def _session(databases: DatabasePair, **overrides: object) -> SyncSession:
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        **overrides,
    )
    return SyncSession(settings)


def test_converge_reads_production_now_not_the_notification(databases: DatabasePair) -> None:
    """Keys are hints: the value written is production's current one, and only real differences."""
    databases.production.insert_jobs([(1, "A", 510), (2, "B", 800), (3, "C", 7)])
    databases.sandbox.insert_jobs([(1, "A", 500), (2, "B", Decimal("800.0")), (3, "C", 1)])
    with _session(databases) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        keys = [(1, "A"), (2, "B"), (1, "A"), (99, "Z")]  # duplicate and unknown keys are harmless
        result = converge_keys(context, session.production, session.sandbox, keys)
    assert sorted(result.updated) == [(1, "A")]
    assert databases.sandbox.fab_orders()[(1, "A")] == Decimal("510.00")
    assert databases.sandbox.fab_orders()[(3, "C")] == Decimal("1.00")  # not asked: untouched


def test_converge_reports_a_value_its_transform_cannot_convert(databases: DatabasePair) -> None:
    """A production value the transform can't read fails that key only; the rest converge."""
    databases.production.execute(
        "CREATE TABLE jobs_text (job int, release text, fab_order text, UNIQUE (job, release))"
    )
    databases.production.execute("INSERT INTO jobs_text VALUES (1, 'A', 'abc'), (2, 'B', '9')")
    databases.sandbox.insert_jobs([(1, "A", 1), (2, "B", 1)])
    with _session(
        databases, production_table="jobs_text", field_mappings="fab_order->fab_order:decimal"
    ) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        result = converge_keys(context, session.production, session.sandbox, [(1, "A"), (2, "B")])
    assert result.updated == [(2, "B")]
    assert [f.key for f in result.statistics.failures] == [(1, "A")]
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal("1.00"), (2, "B"): Decimal("9.00")}


def test_a_converged_batch_is_freed_at_once_not_left_for_the_collector(
    databases: DatabasePair,
) -> None:
    """No reference cycle keeps a batch (rows, results, the hook) alive after converging.

    The daemon converges thousands of keys a second; cyclic garbage would be
    freed only by the collector's full passes, which pause every thread.
    """
    databases.production.insert_jobs([(i, "A", 600 + i) for i in range(40)])
    databases.sandbox.insert_jobs([(i, "A", 500) for i in range(40)])
    seen: list[int] = []
    with _session(databases) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        gc.collect()
        gc.disable()
        try:
            result = converge_keys(
                context,
                session.production,
                session.sandbox,
                [(i, "A") for i in range(40)],
                on_applied=lambda conn, results, source: seen.append(len(results)),
            )
            assert len(result.updated) == 40
            del result
            assert gc.collect() == 0
        finally:
            gc.enable()
    assert sum(seen) == 40
