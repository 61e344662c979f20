"""Logical capture: production changes streamed from a slot, kept while the daemon is away.

Each test runs the real daemon against a production server with
``wal_level = logical`` and a separate sandbox server; no trigger is installed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from propagator.settings import Settings
from propagator.testing import DaemonRunner
from tests.conftest import Server
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import converged, daemon_settings, install_logical, seed

ROWS = 200


def logical_settings(databases: DatabasePair, **overrides: object) -> Settings:
    """Quick daemon settings in logical mode, with a slot of the test's own (names are global)."""
    return daemon_settings(
        databases,
        capture="logical",
        logical_slot=databases.production.name,
        **overrides,
    )


def prepared(databases: DatabasePair, *, install: bool = True, **overrides: object) -> Settings:
    """``ROWS`` equal rows on both sides, logical settings, and (``install``) the capture."""
    seed(databases, ROWS, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    settings = logical_settings(databases, **overrides)
    if install:
        install_logical(databases, settings)
    return settings


@contextmanager
def started(settings: Settings) -> Iterator[DaemonRunner]:
    with DaemonRunner(settings) as runner:
        runner.wait_ready(timeout=30)
        yield runner


def reconciles(runner: DaemonRunner) -> float:
    return runner.metric("propagator_reconcile_runs_total")


def catchups(runner: DaemonRunner) -> float:
    return runner.metric("propagator_reconcile_runs_total", source="catchup")


def update_production(databases: DatabasePair, where: str, value: str = "job * 10") -> None:
    databases.production.execute(f"UPDATE jobs SET fab_order = {value} WHERE {where}")


def test_a_new_slot_is_caught_up_once_then_changes_stream_with_no_trigger(
    logical_databases: DatabasePair,
) -> None:
    databases = logical_databases
    settings = prepared(databases)
    with started(settings) as runner:
        update_production(databases, "job <= 50")
        databases.production.execute(
            "INSERT INTO jobs (job, release, fab_order) VALUES (9999, 'A', 1)"
        )
        databases.sandbox.execute("INSERT INTO jobs (job, release) VALUES (9999, 'A')")
        # What changed before the slot existed is not in it: one catch-up, then the stream
        # (which may converge the sandbox before the catch-up has finished).
        wait_until(
            lambda: converged(databases) and catchups(runner) == 1,
            timeout=20,
            what="the sandbox converged and caught up",
        )
        assert reconciles(runner) == 1
        wait_until(
            lambda: runner.metric("propagator_capture_slot_retained_wal_bytes") > 0,
            timeout=10,
            what="the slot's retained WAL exported",
        )
        status = runner.daemon.status()
    triggers = databases.production.fetchall(
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
    )
    assert triggers == [(0,)]
    assert status["capture"]["kind"] == "logical"


def test_a_new_slot_first_read_while_standing_by_is_caught_up_on_taking_the_lead(
    logical_databases: DatabasePair,
) -> None:
    """The slot is checked as soon as the daemon connects, which may be before it leads."""
    databases = logical_databases
    lock_id = 7_000_000 + zlib.crc32(databases.production.name.encode()) % 1_000_000
    settings = prepared(databases, leader_lock_id=lock_id)
    databases.sandbox.execute("UPDATE jobs SET fab_order = NULL WHERE job <= 5")  # not in the slot
    with psycopg.connect(databases.sandbox.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_id,))
        with DaemonRunner(settings) as runner:
            runner.wait_for(lambda d: d.role == "standby", timeout=20, what="the standby")
            wait_until(
                lambda: runner.metric("propagator_listener_connected") == 1,
                timeout=20,
                what="the slot checked while standing by",
            )
            holder.execute("SELECT pg_advisory_unlock(%s)", (lock_id,))
            wait_until(
                lambda: converged(databases) and catchups(runner) == 1,
                timeout=20,
                what="the rows changed before the slot existed",
            )
            assert reconciles(runner) == 1


def test_changes_made_while_the_daemon_is_stopped_arrive_after_a_restart_without_a_reconcile(
    logical_databases: DatabasePair,
) -> None:
    databases = logical_databases
    settings = prepared(databases)
    with started(settings) as runner:
        update_production(databases, "job <= 10")
        wait_until(lambda: converged(databases), timeout=20, what="the first changes")
    update_production(databases, "job > 10", "job * 7")  # nobody listens now
    with started(settings) as runner:
        wait_until(lambda: converged(databases), timeout=20, what="what changed while away")
        assert reconciles(runner) == 0  # the slot kept them: no catch-up after a restart


def _invalidate_slot(server: Server, databases: DatabasePair, slot: str) -> None:
    """Write WAL past the 1 MB a slot may keep until a checkpoint drops the slot's WAL."""
    with server.admin() as admin:

        def lost() -> bool:
            update_production(databases, "true", "fab_order + 1")
            admin.execute("SELECT pg_catalog.pg_switch_wal()")
            admin.execute("CHECKPOINT")
            state = admin.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            return state is not None and state[0] == "lost"

        wait_until(lost, timeout=60, interval=0.1, what="the slot invalidated")


@pytest.mark.slow
@pytest.mark.parametrize("dedicated_pair", ["small_wal_server"], indirect=True)
def test_an_invalidated_slot_is_recreated_and_answered_by_a_full_reconcile(
    dedicated_pair: DatabasePair, small_wal_server: Server
) -> None:
    databases = dedicated_pair
    settings = prepared(databases)
    with started(settings):
        pass  # the slot is read once, then nobody reads it while production goes on
    _invalidate_slot(small_wal_server, databases, settings.logical_slot)
    with DaemonRunner(settings) as runner:
        wait_until(lambda: converged(databases), timeout=30, what="the sandbox converged")
        assert runner.metric("propagator_capture_slot_recreated_total") == 1
        assert runner.metric("propagator_reconcile_runs_total", source="catchup") >= 1
        state = databases.production.fetchall(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
            (settings.logical_slot,),
        )
        assert state
        assert state[0][0] != "lost"


@pytest.mark.slow
def test_a_missing_publication_is_reported_then_the_daemon_recovers_once_installed(
    logical_databases: DatabasePair,
) -> None:
    databases = logical_databases
    settings = prepared(databases, install=False)
    with DaemonRunner(settings) as runner:
        wait_until(
            lambda: any(
                "publication" in reason and "capture install" in reason
                for reason in runner.daemon.readiness()[1]
            ),
            timeout=20,
            what="readiness naming the missing publication",
        )
        install_logical(databases, settings)
        update_production(databases, "job <= 5")
        wait_until(lambda: converged(databases), timeout=30, what="recovery after install")


@pytest.mark.parametrize("standby_first", [False])
def test_only_the_leader_streams_the_slot(
    logical_databases: DatabasePair, standby_first: bool
) -> None:
    databases = logical_databases
    settings = prepared(databases)
    with started(settings) as leader, DaemonRunner(settings, instance_id="standby") as standby:
        standby.wait_for(lambda d: d.role == "standby", timeout=20, what="the standby")
        update_production(databases, "job <= 20")
        wait_until(lambda: converged(databases), timeout=20, what="the leader's writes")
        with psycopg.connect(databases.production.url, autocommit=True) as conn:
            streams = conn.execute("SELECT application_name FROM pg_stat_replication").fetchall()
        assert [name for (name,) in streams] == [
            f"propagator stream {leader.daemon.instance_id}"[:63]
        ]


def test_a_server_without_logical_wal_is_reported_and_retried_slowly(
    databases: DatabasePair,
) -> None:
    """The ordinary production server runs with wal_level = replica."""
    settings = logical_settings(databases)
    with DaemonRunner(settings) as runner:
        wait_until(
            lambda: any("wal_level = logical" in reason for reason in runner.daemon.readiness()[1]),
            timeout=20,
            what="readiness naming wal_level",
        )
        assert runner.metric("propagator_retries_total", cause="permanent") >= 1


def test_a_role_without_replication_is_told_the_grant_it_lacks(
    logical_databases: DatabasePair,
) -> None:
    databases = logical_databases
    role = f"r_{databases.production.name}"
    databases.production.execute(f"CREATE ROLE {role} LOGIN")
    databases.production.execute(f"GRANT SELECT ON jobs TO {role}")
    try:
        url = databases.production.url.replace("postgres@", f"{role}@", 1)
        settings = logical_settings(databases, production_database_url=url)
        with DaemonRunner(settings) as runner:
            wait_until(
                lambda: any(
                    f"ALTER ROLE {role} REPLICATION" in reason
                    for reason in runner.daemon.readiness()[1]
                ),
                timeout=20,
                what="readiness naming the REPLICATION grant",
            )
    finally:
        databases.production.execute(f"DROP OWNED BY {role}")
        databases.production.execute(f"DROP ROLE {role}")


@pytest.mark.slow
def test_a_periodic_reconcile_counts_drift_the_slot_never_carried(
    logical_databases: DatabasePair,
) -> None:
    """A sandbox row changed by hand is no production change: the reconcile repairs it and
    says the event path (here the slot) missed it."""
    databases = logical_databases
    settings = prepared(databases, reconcile_interval="2s")
    with started(settings) as runner:
        databases.sandbox.execute("UPDATE jobs SET fab_order = -1 WHERE job = 5")
        wait_until(lambda: converged(databases), timeout=20, what="the periodic reconcile")
        wait_until(
            lambda: runner.metric("propagator_reconcile_missed_drift") == 1,
            timeout=10,
            what="the drift the slot missed counted",
        )
