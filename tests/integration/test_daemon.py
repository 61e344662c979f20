"""The daemon in-process against two real servers: events, catch-up, resync, bad payloads."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import (
    caught_up_daemon,
    converged,
    daemon_settings,
    differences,
    install_triggers,
    seed,
)


@pytest.fixture
def running(databases: DatabasePair) -> Iterator[DaemonRunner]:
    """Triggers installed, 200 matching rows, and a caught-up daemon."""
    with caught_up_daemon(databases) as runner:
        yield runner


def test_mapped_update_propagates_and_unmapped_update_sends_nothing(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """An UPDATE of fab_order reaches the sandbox; an UPDATE of an unmapped column is silent."""
    received = running.metric("propagator_notifications_received_total")
    databases.production.execute("UPDATE jobs SET paint_color = 'red' WHERE job <= 50")
    databases.production.execute("UPDATE jobs SET fab_order = 777 WHERE job = 7")
    wait_until(
        lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 7") == 777,
        what="the fab_order update in the sandbox",
    )
    # Notifications arrive in commit order: the paint_color one would have come first.
    assert running.metric("propagator_notifications_received_total") == received + 1
    assert databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE paint_color = 'red'") == 0
    assert running.metric("propagator_batches_applied_total", source="event") >= 1
    assert running.metric("propagator_rows_applied_total", source="event") == 1
    assert running.metric("propagator_propagation_lag_seconds_count") >= 1
    status = running.daemon.status()
    assert status["role"] == "leader"
    assert status["last_batch"]["updated"] == 1
    assert running.daemon.readiness() == (True, [])


def test_burst_on_one_row_is_coalesced(databases: DatabasePair, running: DaemonRunner) -> None:
    """Many updates of one row inside the debounce window become few re-reads, last value wins."""
    with databases.production.connect() as conn:
        for value in range(1, 41):
            conn.execute("UPDATE jobs SET fab_order = %s WHERE job = 3", (value,))
    wait_until(
        lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 3") == 40,
        what="the last value of the burst",
    )
    assert running.metric("propagator_keys_coalesced_total") >= 1


@pytest.mark.parametrize("method", ["auto", "stream"])
def test_changes_made_while_stopped_are_caught_up(databases: DatabasePair, method: str) -> None:
    """Rows changed while no daemon ran are converged by the catch-up, by the configured method."""
    settings = daemon_settings(databases, reconcile_method=method)
    install_triggers(databases, settings)
    seed(databases, 500)
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        wait_until(lambda: converged(databases), what="convergence")
        last = running.daemon.last_reconcile
        assert last is not None
        assert last["source"] == "catchup"
        assert last["method"] == ("checksum" if method == "auto" else "stream")
        assert last["updated"] == 500
        assert running.metric("propagator_reconcile_runs_total", source="catchup", result="success")
        assert running.metric("propagator_rows_applied_total", source="catchup") == 500
    assert running.exit_code == 0


def test_malformed_notifications_are_counted_and_never_stop_the_listener(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """Garbage on the channel is counted by reason; the next real change still propagates."""
    garbage = {
        "invalid_json": "not json at all",
        "unknown_version": '{"v": 9, "t": 1, "k": [[1, "A"]]}',
        "bad_keys": '{"v": 1, "t": 1, "k": [[1]]}',
        "other": '{"v": 1, "k": [[1, "A"]]}',
    }
    with databases.production.connect() as conn:
        for payload in garbage.values():
            conn.execute("SELECT pg_notify('propagator_jobs', %s)", (payload,))
    databases.production.execute("UPDATE jobs SET fab_order = 4242 WHERE job = 9")
    wait_until(
        lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 9") == 4242,
        what="a real change after the garbage",
    )
    for reason in garbage:
        assert running.metric("propagator_notifications_malformed_total", reason=reason) == 1
    assert running.daemon.listener.connected


def test_key_from_a_payload_is_reread_never_trusted(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """A forged or stale notification only causes a re-read: production's value is written."""
    databases.sandbox.execute("UPDATE jobs SET fab_order = -1 WHERE job = 11")
    databases.production.execute(
        "SELECT pg_notify('propagator_jobs', %s)",
        ('{"v": 1, "t": 1, "k": [[11, "A"], [99999, "Z"]]}',),
    )
    wait_until(
        lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 11") == 11,
        what="the sandbox row re-read from production",
    )


def test_resync_notification_runs_a_full_reconcile(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """A resync payload makes the daemon converge every row, not just listed keys."""
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job % 10 = 0")
    databases.production.execute(
        "SELECT pg_notify('propagator_jobs', %s)", ('{"v": 1, "t": 1, "resync": true}',)
    )
    wait_until(lambda: converged(databases), what="convergence after resync")
    wait_until(
        lambda: (
            running.metric("propagator_reconcile_runs_total", source="reconcile", result="success")
            >= 1
        ),
        what="the reconcile metric",
    )
    assert running.daemon.last_reconcile is not None
    assert running.daemon.last_reconcile["updated"] == 20


def test_graceful_stop_applies_the_pending_batch(databases: DatabasePair) -> None:
    """Keys still waiting in the debounce buffer are applied before a graceful stop returns."""
    settings = daemon_settings(databases, debounce_quiet="30s", debounce_max_delay="60s")
    install_triggers(databases, settings)
    seed(databases, 50, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    running = DaemonRunner(settings).start()
    running.wait_caught_up()
    databases.production.execute("UPDATE jobs SET fab_order = fab_order + 1000 WHERE job <= 5")
    wait_until(lambda: len(running.daemon.buffer) == 5, what="keys waiting in the buffer")
    assert not converged(databases)
    assert running.stop() == 0
    assert converged(databases)
    assert running.metric("propagator_leader") == 0


def test_ten_thousand_concurrent_updates_end_equal(databases: DatabasePair) -> None:
    """10,000 single-row updates from four concurrent writers leave both sides equal."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 2000, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")

    def writer(seed_value: int) -> None:
        chooser = random.Random(seed_value)
        with databases.production.connect() as conn:
            for _ in range(2500):
                conn.execute(
                    "UPDATE jobs SET fab_order = %s WHERE job = %s",
                    (chooser.randint(1, 10**6), chooser.randint(1, 2000)),
                )

    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        started = time.monotonic()
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(lambda: converged(databases), timeout=60, what="convergence")
        elapsed = time.monotonic() - started
        assert running.metric("propagator_reconcile_runs_total", source="reconcile") == 0
    assert differences(settings) == 0
    assert elapsed < 120


@pytest.mark.slow
def test_one_update_of_a_hundred_thousand_rows_propagates(databases: DatabasePair) -> None:
    """A single statement changing 100,000 rows propagates completely (resync path)."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    fill = (
        "INSERT INTO jobs (job, release, fab_order) SELECT g, 'A', 1 FROM generate_series(1, %s) g"
    )
    databases.production.execute(fill, (100_000,))
    databases.sandbox.execute(fill, (100_000,))
    with DaemonRunner(settings) as running:
        running.wait_caught_up(timeout=60)
        databases.production.execute("UPDATE jobs SET fab_order = fab_order + job")
        wait_until(
            lambda: databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE fab_order = 1") == 0,
            timeout=120,
            interval=0.5,
            what="all 100,000 rows in the sandbox",
        )
    assert differences(settings) == 0
