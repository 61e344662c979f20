"""Surprises on real servers: production triggers dropped or disabled by hand, and stalls.

The daemon cannot repair production's triggers (its role should not be able to):
it must say so everywhere an operator looks, within about one heartbeat, while the
periodic reconcile keeps the sandbox right. A writer that stops making progress
must show it too: keys that age, and reconciles that stop succeeding.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from propagator.daemon.triggerwatch import read_status
from propagator.services import triggers
from propagator.settings import watched_tables
from tests.helpers import DatabasePair, run_cli, wait_until
from tests.integration.support import (
    ObservedDaemon,
    daemon_settings,
    install_triggers,
    running_daemon,
    sample,
)

HEARTBEAT = 0.5  # FAST's heartbeat_interval: the trigger check runs this often
WITHIN_A_HEARTBEAT = 4 * HEARTBEAT  # the check itself, and polling, take a moment too


def seed_equal(databases: DatabasePair, count: int) -> None:
    rows = [(job, "A", job) for job in range(1, count + 1)]
    databases.production.insert_jobs(rows)
    databases.sandbox.insert_jobs(rows)


def readyz(daemon: ObservedDaemon) -> tuple[int, list[str]]:
    code, body = daemon.get("/readyz")
    reasons: list[str] = json.loads(body)["reasons"]
    return code, reasons


def status(daemon: ObservedDaemon) -> dict[str, Any]:
    code, body = daemon.get("/status")
    assert code == 200
    document: dict[str, Any] = json.loads(body)["mappings"][0]
    return document


def triggers_current(daemon: ObservedDaemon) -> float:
    return sample(daemon.scrape(), "propagator_triggers_current")


def trigger_reason(daemon: ObservedDaemon, fragment: str) -> str | None:
    """The /readyz reason about public.jobs' triggers naming ``fragment``, while 503."""
    code, reasons = readyz(daemon)
    found = [r for r in reasons if "production triggers missing or not current on public.jobs" in r]
    return found[0] if code == 503 and found and fragment in found[0] else None


def check_exit_code(databases: DatabasePair) -> int:
    return run_cli(["triggers", "status", "--check"], databases.env()).returncode


def test_triggers_dropped_or_disabled_by_hand_are_loud_and_reconciles_still_converge(
    databases: DatabasePair,
) -> None:
    """Uninstalled behind the daemon's back: /readyz, /status, the metric and `triggers
    status --check` say so within about a heartbeat, and a periodic reconcile (not the
    event path) converges a change, counted as missed drift. Disabled triggers are caught
    the same way; reinstalling or enabling them clears everything."""
    settings = daemon_settings(databases, reconcile_interval="2s")
    install_triggers(databases, settings)
    seed_equal(databases, 20)
    with running_daemon(settings) as daemon:
        wait_until(lambda: readyz(daemon) == (200, []), timeout=30, what="/readyz 200")
        wait_until(lambda: triggers_current(daemon) == 1, what="the triggers seen current")
        assert status(daemon)["triggers"]["current"] is True
        assert check_exit_code(databases) == 0

        removed = run_cli(["triggers", "uninstall"], databases.env())
        assert removed.returncode == 0, removed.stdout + removed.stderr
        reason = wait_until(
            lambda: trigger_reason(daemon, "not installed"),
            timeout=WITHIN_A_HEARTBEAT,
            what="/readyz naming the missing triggers",
        )
        assert reason == (
            "production triggers missing or not current on public.jobs: not installed"
        )
        triggers = status(daemon)["triggers"]
        assert (triggers["current"], triggers["problems"]) == (False, ["not installed"])
        assert triggers_current(daemon) == 0
        assert check_exit_code(databases) == 1

        databases.production.execute("UPDATE jobs SET fab_order = 4242 WHERE job = 3")
        wait_until(
            lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 3") == 4242,
            timeout=15,
            what="the periodic reconcile converging the unannounced change",
        )
        wait_until(
            lambda: sample(daemon.scrape(), "propagator_reconcile_missed_drift") == 1,
            timeout=10,
            what="the missed drift counted",
        )
        assert sample(daemon.scrape(), "propagator_rows_applied_total", source="event") == 0

        installed = run_cli(["triggers", "install"], databases.env())
        assert installed.returncode == 0, installed.stdout + installed.stderr
        wait_until(lambda: readyz(daemon) == (200, []), timeout=WITHIN_A_HEARTBEAT, what="ready")
        assert triggers_current(daemon) == 1

        databases.production.execute("ALTER TABLE jobs DISABLE TRIGGER ALL")
        reason = wait_until(
            lambda: trigger_reason(daemon, "disabled triggers"),
            timeout=WITHIN_A_HEARTBEAT,
            what="/readyz naming the disabled triggers",
        )
        assert status(daemon)["triggers"]["current"] is False
        assert triggers_current(daemon) == 0
        assert check_exit_code(databases) == 1
        databases.production.execute("ALTER TABLE jobs ENABLE TRIGGER ALL")
        wait_until(lambda: readyz(daemon) == (200, []), timeout=WITHIN_A_HEARTBEAT, what="ready")
        assert status(daemon)["triggers"]["problems"] == []
        wait_until(
            lambda: sample(daemon.scrape(), "propagator_reconcile_missed_drift") == 0,
            timeout=10,
            what="a clean periodic reconcile",
        )


def test_one_trigger_dropped_by_hand_is_named(databases: DatabasePair) -> None:
    """DROP TRIGGER on one of the set: the reason names the missing trigger."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed_equal(databases, 5)
    with running_daemon(settings) as daemon:
        wait_until(lambda: readyz(daemon) == (200, []), timeout=30, what="/readyz 200")
        wait_until(lambda: status(daemon)["triggers"]["current"], what="the first check")
        (name, *_) = sorted(
            row[0]
            for row in databases.production.fetchall(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.jobs'::regclass "
                "AND NOT tgisinternal"
            )
        )
        databases.production.execute(f'DROP TRIGGER "{name}" ON jobs')
        reason = wait_until(
            lambda: trigger_reason(daemon, name),
            timeout=WITHIN_A_HEARTBEAT,
            what="/readyz naming the dropped trigger",
        )
        assert "missing triggers" in reason
        assert triggers_current(daemon) == 0


def test_triggers_never_installed_are_reported_but_do_not_make_the_daemon_unready(
    databases: DatabasePair,
) -> None:
    """A daemon deployed before a DBA installed the triggers: ready (it reconciles), while
    /status and the metric say the triggers are not installed."""
    settings = daemon_settings(databases)
    seed_equal(databases, 5)
    with running_daemon(settings) as daemon:
        wait_until(lambda: readyz(daemon) == (200, []), timeout=30, what="/readyz 200")
        triggers = wait_until(
            lambda: status(daemon)["triggers"]["checked_at"] and status(daemon)["triggers"],
            what="the first check",
        )
        assert (triggers["current"], triggers["installed"]) == (False, False)
        assert "not installed" in triggers["problem"]
        assert triggers_current(daemon) == 0
        assert readyz(daemon) == (200, [])


@pytest.mark.slow
def test_keys_held_up_by_a_locked_sandbox_age_visibly(databases: DatabasePair) -> None:
    """A sandbox session locks the table: the changed key waits, its age grows in the metric
    and /status; once the lock is gone it converges and the age drops to 0."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed_equal(databases, 5)
    with running_daemon(settings) as daemon:
        wait_until(lambda: readyz(daemon) == (200, []), timeout=30, what="/readyz 200")
        assert sample(daemon.scrape(), "propagator_oldest_pending_key_age_seconds") == 0
        with psycopg.connect(databases.sandbox.url) as locker:
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            databases.production.execute("UPDATE jobs SET fab_order = 99 WHERE job = 2")
            wait_until(
                lambda: sample(daemon.scrape(), "propagator_oldest_pending_key_age_seconds") >= 3,
                timeout=15,
                what="the held key's age growing",
            )
            assert status(daemon)["oldest_pending_key_age_seconds"] >= 3
            locker.rollback()
        wait_until(
            lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 2") == 99,
            what="the key applied once the lock is gone",
        )
        wait_until(
            lambda: sample(daemon.scrape(), "propagator_oldest_pending_key_age_seconds") == 0,
            what="the age back to 0",
        )


@pytest.mark.slow
def test_readiness_fails_when_no_reconcile_succeeded_within_two_intervals(
    databases: DatabasePair,
) -> None:
    """A sandbox whose mapped column is gone fails every reconcile: after two intervals
    /readyz is 503 saying so; with the column back the next reconcile succeeds and the
    daemon is ready again."""
    settings = daemon_settings(databases, reconcile_interval="1s")
    install_triggers(databases, settings)
    seed_equal(databases, 5)
    overdue = "no reconcile succeeded in the last 2 intervals"
    with running_daemon(settings) as daemon:
        wait_until(lambda: readyz(daemon) == (200, []), timeout=30, what="/readyz 200")
        databases.sandbox.execute("ALTER TABLE jobs RENAME COLUMN fab_order TO fab_order_moved")
        reasons = wait_until(
            lambda: (
                (found := readyz(daemon))[0] == 503
                and any(reason.startswith(overdue) for reason in found[1])
                and found[1]
            ),
            timeout=15,
            what="/readyz 503 for the overdue reconcile",
        )
        assert any(reason.startswith(overdue) for reason in reasons), reasons
        assert any("reconcile_interval 1.0 s" in reason for reason in reasons), reasons
        databases.sandbox.execute("ALTER TABLE jobs RENAME COLUMN fab_order_moved TO fab_order")
        wait_until(lambda: readyz(daemon) == (200, []), timeout=15, what="ready again")


def test_a_daemon_serving_some_mappings_of_a_table_accepts_triggers_watching_more(
    databases: DatabasePair,
) -> None:
    """Triggers installed for every mapping of a table watch more columns than a daemon
    serving one of them knows: they announce all it needs, so they count as current."""
    jobs = daemon_settings(databases).named("jobs")
    qa = daemon_settings(databases, field_mappings="paint_color").named("jobs_qa")
    (both,) = watched_tables([jobs, qa])
    (alone,) = watched_tables([jobs])
    with databases.production.connect() as conn:
        triggers.install(conn, both)
        assert not triggers.status(conn, alone).current  # what the CLI says of one mapping
        assert read_status(conn, alone).current
        triggers.uninstall(conn, both)
        triggers.install(conn, alone)
        narrower = read_status(conn, both)
        assert not narrower.current
        assert any(problem.startswith("watches columns") for problem in narrower.problems)
