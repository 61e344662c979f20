"""The event path's speed-ups keep its guarantees: read-only production reads, usable
connections after a refused statement, and a steady stream never waiting out max delay."""

from __future__ import annotations

import threading

import psycopg
import pytest

from propagator.adapters.postgres import read_by_keys
from propagator.errors import PermanentError
from propagator.services.sync import SyncSession, converge_keys
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import (
    converged,
    daemon_settings,
    install_triggers,
    seed,
)


def test_production_reads_by_key_stay_read_only(databases: DatabasePair) -> None:
    """A production filter that would write fails: the pipelined read is a READ ONLY transaction."""
    seed(databases, 3)
    databases.production.execute("CREATE SEQUENCE side_effect")
    settings = daemon_settings(databases, production_filter="nextval('side_effect') > 0")
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        with pytest.raises(PermanentError, match="read-only transaction"):
            read_by_keys(
                session.production,
                context.production,
                context.spec.key_columns,
                context.source_reads,
                [(1, "A")],
                where=context.production_filter,
            )
        info = session.production.info
        assert info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert not session.production.autocommit


def test_production_reads_by_key_keep_a_percent_in_the_filter(databases: DatabasePair) -> None:
    """The by-key read is sent with parameters; the filter's ``%`` must stay a LIKE pattern."""
    databases.production.insert_jobs([(1, "A1", 5), (2, "B1", 6)])
    settings = daemon_settings(databases, production_filter="release LIKE 'A%'")
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        rows = read_by_keys(
            session.production,
            context.production,
            context.spec.key_columns,
            context.source_reads,
            [(1, "A1"), (2, "B1")],
            where=context.production_filter,
        )
    assert [row[:2] for row in rows] == [(1, "A1")]


def test_a_refused_read_leaves_the_connection_usable(databases: DatabasePair) -> None:
    """After a key the server cannot cast, the same connections converge the next keys."""
    seed(databases, 5)
    settings = daemon_settings(databases)
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        with pytest.raises(PermanentError):
            converge_keys(context, session.production, session.sandbox, [("not a number", "A")])
        result = converge_keys(
            context, session.production, session.sandbox, [(1, "A"), (2, "A"), (3, "A")]
        )
        assert result.statistics.updated == 3
        assert not session.production.autocommit
        assert not session.sandbox.autocommit
    assert databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE fab_order = job") == 3


def test_a_rejected_row_is_isolated_and_the_rest_committed(databases: DatabasePair) -> None:
    """A row the sandbox refuses inside the pipelined write fails alone; the others apply."""
    seed(databases, 4)
    databases.sandbox.execute("ALTER TABLE jobs ADD CONSTRAINT small CHECK (fab_order < 3)")
    settings = daemon_settings(databases)
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        result = converge_keys(
            context, session.production, session.sandbox, [(i, "A") for i in range(1, 5)]
        )
    assert sorted(result.updated) == [(1, "A"), (2, "A")]
    assert sorted(f.key for f in result.statistics.failures) == [(3, "A"), (4, "A")]
    assert databases.sandbox.fab_orders() == {(1, "A"): 1, (2, "A"): 2, (3, "A"): 0, (4, "A"): 0}


def test_a_steady_stream_is_followed_without_waiting_for_max_delay(
    databases: DatabasePair,
) -> None:
    """Under a never-quiet stream batches follow each other, not one per max delay."""
    settings = daemon_settings(databases, debounce_quiet="500ms", debounce_max_delay="3s")
    install_triggers(databases, settings)
    seed(databases, 20)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    stop = threading.Event()

    def stream() -> None:  # one update every 50 ms: the quiet window never elapses
        with psycopg.connect(databases.production.url, autocommit=True) as conn:
            value = 0
            while not stop.wait(0.05):
                value += 1
                conn.execute("UPDATE jobs SET fab_order = %s WHERE job = %s", (value, value % 20))

    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        writer = threading.Thread(target=stream)
        writer.start()
        try:
            # The first batch waits for max delay (nothing was applying); from then on
            # each batch takes what gathered during the previous one, or in the quiet
            # window after it, so batches keep coming while the stream goes on.
            wait_until(
                lambda: running.metric("propagator_batches_applied_total", source="event") >= 1,
                timeout=30,
                what="the first batch",
            )
            first = running.metric("propagator_batches_applied_total", source="event")
            wait_until(
                lambda: (
                    running.metric("propagator_batches_applied_total", source="event") >= first + 3
                ),
                timeout=2.5,
                what="three more batches within one max delay, the stream still going",
            )
        finally:
            stop.set()
            writer.join()
        wait_until(lambda: converged(databases), timeout=30, what="convergence")


def test_a_read_on_an_autocommit_connection_is_read_only_too(databases: DatabasePair) -> None:
    """Without the pipelined path (autocommit connection) the production read stays read-only."""
    seed(databases, 3)
    databases.production.execute("CREATE SEQUENCE side_effect")
    settings = daemon_settings(databases, production_filter="nextval('side_effect') > 0")
    with SyncSession(settings) as session:
        context = session.prepare()
        conn = session.connect("production", autocommit=True)
        with pytest.raises(PermanentError, match="read-only transaction"):
            read_by_keys(
                conn,
                context.production,
                context.spec.key_columns,
                context.source_reads,
                [(1, "A")],
                where=context.production_filter,
            )
        assert conn.autocommit
