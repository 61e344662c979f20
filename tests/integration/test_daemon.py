"""The daemon in-process against two real servers: events, catch-up, resync, bad payloads."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from propagator.core.report import ReconcileReport
from propagator.daemon import Daemon
from propagator.services.sync import SyncSession, reconcile
from propagator.services.triggers import install
from propagator.settings import Settings, load_settings
from tests.helpers import DatabasePair, wait_until

FAST = {
    "http_port": 0,
    "reconcile_interval": "0",
    "heartbeat_interval": "500ms",
    "heartbeat_timeout": "3s",
    "retry_initial": "50ms",
    "retry_max": "1s",
    "standby_poll_interval": "200ms",
    "permanent_retry_interval": "2s",
    "shutdown_timeout": "15s",
    "connect_timeout": "3s",
}


def daemon_settings(databases: DatabasePair, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "production_database_url": databases.production.url,
        "sandbox_database_url": databases.sandbox.url,
        **FAST,
        **overrides,
    }
    return load_settings(**values)


def install_triggers(databases: DatabasePair, settings: Settings) -> None:
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, settings)


def seed(databases: DatabasePair, count: int, *, sandbox_value: Any = 0) -> None:
    """``count`` jobs on both sides: production fab_order = job, sandbox ``sandbox_value``."""
    databases.production.insert_jobs((i, "A", i) for i in range(1, count + 1))
    databases.sandbox.insert_jobs((i, "A", sandbox_value) for i in range(1, count + 1))


def converged(databases: DatabasePair) -> bool:
    return databases.production.fab_orders() == databases.sandbox.fab_orders()


def differences(settings: Settings) -> int:
    """What a separate dry-run reconcile finds (the proof a test trusts)."""
    with SyncSession(settings, application_name="test check") as session:
        context = session.prepare()
        report = ReconcileReport(True, "production", "sandbox", context.spec.target_columns)
        reconcile(context, lambda side: session.connect(side), report, apply=False)
    return report.differences


class DaemonThread:
    """A daemon on its own event loop in a thread, as the tests drive it."""

    def __init__(self, settings: Settings, instance_id: str | None = None) -> None:
        self.daemon = Daemon(settings, instance_id=instance_id, handle_signals=False)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._main, name="daemon-under-test", daemon=True)

    def _main(self) -> None:
        self.exit_code = asyncio.run(self.daemon.run())

    def start(self) -> DaemonThread:
        self.thread.start()
        assert self.daemon.started.wait(30), "the daemon did not start"
        return self

    def stop(self, timeout: float = 60) -> int | None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.exit_code

    def metric(self, name: str, **labels: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value

    def wait_caught_up(self, timeout: float = 30) -> None:
        wait_until(
            lambda: self.daemon.role == "leader" and self.daemon.catchup_done,
            timeout=timeout,
            what="leadership and a finished catch-up",
        )

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.thread.is_alive():
            self.stop()


@pytest.fixture
def running(databases: DatabasePair) -> Iterator[DaemonThread]:
    """Triggers installed, 200 matching rows, and a caught-up daemon."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 200, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with DaemonThread(settings) as running:
        running.wait_caught_up()
        yield running


def test_mapped_update_propagates_and_unmapped_update_sends_nothing(
    databases: DatabasePair, running: DaemonThread
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


def test_burst_on_one_row_is_coalesced(databases: DatabasePair, running: DaemonThread) -> None:
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
    with DaemonThread(settings) as running:
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
    databases: DatabasePair, running: DaemonThread
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
    databases: DatabasePair, running: DaemonThread
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
    databases: DatabasePair, running: DaemonThread
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
    running = DaemonThread(settings).start()
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

    with DaemonThread(settings) as running:
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
    with DaemonThread(settings) as running:
        running.wait_caught_up(timeout=60)
        databases.production.execute("UPDATE jobs SET fab_order = fab_order + job")
        wait_until(
            lambda: databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE fab_order = 1") == 0,
            timeout=120,
            interval=0.5,
            what="all 100,000 rows in the sandbox",
        )
    assert differences(settings) == 0
