"""Sandbox users are never blocked: rows they hold are skipped and retried, never failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, run_cli, wait_until
from tests.integration.support import (
    caught_up_daemon,
    converged,
    daemon_settings,
    install_triggers,
    seed,
)

LOCKED_JOB = 7


@contextmanager
def holding(databases: DatabasePair, statement: str) -> Iterator[psycopg.Connection[Any]]:
    """A sandbox session inside a transaction that ran ``statement``, rolled back on exit."""
    with psycopg.connect(databases.sandbox.url) as conn:
        conn.execute(statement)
        try:
            yield conn
        finally:
            conn.rollback()


def sandbox_value(databases: DatabasePair, job: int) -> Any:
    return databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = %s", (job,))


def others_converged(databases: DatabasePair, locked: int) -> bool:
    production = {k: v for k, v in databases.production.fab_orders().items() if k[0] != locked}
    sandbox = {k: v for k, v in databases.sandbox.fab_orders().items() if k[0] != locked}
    return production == sandbox


@pytest.fixture
def running(databases: DatabasePair) -> Iterator[DaemonRunner]:
    """Triggers installed, 200 matching rows, and a caught-up daemon with default lock timeout."""
    with caught_up_daemon(databases) as runner:
        yield runner


def _row_lock_does_not_stall_the_sync(
    databases: DatabasePair, running: DaemonRunner, hold_seconds: float
) -> None:
    lock = f"SELECT 1 FROM jobs WHERE job = {LOCKED_JOB} FOR UPDATE"
    with holding(databases, lock):
        held_since = time.monotonic()
        databases.production.execute("UPDATE jobs SET fab_order = fab_order + 1000 WHERE job <= 51")
        wait_until(
            lambda: others_converged(databases, LOCKED_JOB),
            timeout=min(5.0, hold_seconds),
            what="the 50 rows nobody holds",
        )
        assert sandbox_value(databases, LOCKED_JOB) == LOCKED_JOB  # held: not written
        wait_until(
            lambda: running.metric("propagator_rows_deferred_total", source="event") > 0,
            what="the held row counted as deferred",
        )
        time.sleep(max(0.0, hold_seconds - (time.monotonic() - held_since)))
        assert sandbox_value(databases, LOCKED_JOB) == LOCKED_JOB
    wait_until(lambda: converged(databases), what="the held row once released")
    assert running.metric("propagator_rows_failed_total") == 0
    assert running.metric("propagator_rows_deferred_total", source="event") > 0
    assert running.daemon.status()["last_batch"]["failed"] == 0


def test_a_held_row_waits_while_every_other_row_converges(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """A user holding one row for 3 s: the 50 others converge meanwhile, the held one after."""
    _row_lock_does_not_stall_the_sync(databases, running, hold_seconds=3.0)


@pytest.mark.slow
def test_a_row_held_for_30_seconds_waits_while_every_other_row_converges(
    databases: DatabasePair, running: DaemonRunner
) -> None:
    """The issue's case: a row lock held 30 s stalls nothing else, loses nothing, fails nothing."""
    _row_lock_does_not_stall_the_sync(databases, running, hold_seconds=30.0)


@pytest.mark.slow
def test_reconcile_apply_skips_a_held_row_and_says_so(databases: DatabasePair) -> None:
    """``reconcile --apply`` applies every row nobody holds, reports the held one as busy
    (exit 0), ``--check`` still finds it, and a run after the release applies it."""
    seed(databases, 100)
    lock = f"SELECT 1 FROM jobs WHERE job = {LOCKED_JOB} FOR UPDATE"
    with holding(databases, lock):
        result = run_cli(["reconcile", "--apply"], databases.env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Applied 99 updates" in result.stdout
        assert "1 rows busy" in result.stdout
        assert others_converged(databases, LOCKED_JOB)
        assert sandbox_value(databases, LOCKED_JOB) == 0
    check = run_cli(["reconcile", "--check"], databases.env())
    assert check.returncode == 1, check.stdout + check.stderr
    again = run_cli(["reconcile", "--apply"], databases.env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Applied 1 updates" in again.stdout
    assert "busy" not in again.stdout
    assert converged(databases)


def test_a_table_lock_defers_batches_and_everything_converges_after(
    databases: DatabasePair,
) -> None:
    """``LOCK TABLE`` held a while: batches wait at most the lock timeout, are deferred (not
    failed), and converge once the lock is gone."""
    settings = daemon_settings(databases, sandbox_lock_timeout="300ms")
    install_triggers(databases, settings)
    seed(databases, 100, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        with holding(databases, "LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"):
            databases.production.execute(
                "UPDATE jobs SET fab_order = fab_order + 1 WHERE job <= 20"
            )
            wait_until(
                lambda: running.metric("propagator_rows_deferred_total", source="event") >= 20,
                what="batches deferred while the table is locked",
            )
            time.sleep(1.0)
            assert running.metric("propagator_rows_failed_total") == 0
        wait_until(lambda: converged(databases), what="convergence once the lock is released")
        assert running.metric("propagator_rows_failed_total") == 0
        assert running.daemon.status()["last_batch"]["failed"] == 0
