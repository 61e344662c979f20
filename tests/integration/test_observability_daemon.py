"""The daemon's own endpoints: counters and lag move on real changes, /readyz tells the truth."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import psycopg

from tests.helpers import DatabasePair, cli_env, run_cli, wait_until
from tests.integration.support import (
    Scrape,
    install_triggers,
    observed_settings,
    running_daemon,
    sample,
)


def test_metrics_move_and_readyz_turns_ready_after_catch_up(databases: DatabasePair) -> None:
    """/readyz is 503 until the catch-up finishes, then 200; changes move counters and lag."""
    settings = observed_settings(databases)
    install_triggers(databases, settings)
    databases.production.insert_jobs((job, "A", job) for job in range(1, 51))
    databases.sandbox.insert_jobs((job, "A", 0) for job in range(1, 51))

    # Hold the sandbox table so the catch-up reconcile cannot finish until released.
    blocker = psycopg.connect(databases.sandbox.url)
    blocker.execute("LOCK TABLE public.jobs IN ACCESS EXCLUSIVE MODE")
    try:
        with running_daemon(settings) as daemon:
            # Leader, listening, but the catch-up is held: not ready yet.
            wait_until(lambda: daemon.daemon.role == "leader", timeout=30, what="leadership")
            status, body = daemon.get("/readyz")
            assert status == 503, body
            assert json.loads(body)["status"] == "not_ready"
            assert json.loads(body)["reasons"]
            assert daemon.get("/healthz")[0] == 200  # the loop turns while the catch-up waits
            blocker.rollback()
            wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=30, what="/readyz 200")
            assert json.loads(daemon.get("/readyz")[1]) == {"status": "ready", "reasons": []}

            before = daemon.scrape()
            assert sample(before, "propagator_rows_applied_total", source="catchup") == 50
            assert (
                sample(
                    before, "propagator_reconcile_runs_total", source="catchup", result="success"
                )
                >= 1
            )
            assert sample(before, "propagator_reconcile_last_success_timestamp_seconds") > 0
            assert sample(before, "propagator_leader") == 1
            assert sample(before, "propagator_listener_connected") == 1
            assert sample(before, "propagator_database_connected", database="production") == 1
            assert sample(before, "propagator_database_connected", database="sandbox") == 1
            assert sample(before, "propagator_loop_last_tick_timestamp_seconds") > 0

            databases.production.execute(
                "UPDATE jobs SET fab_order = fab_order + 1000 WHERE job <= 10"
            )

            def moved() -> Scrape | None:
                now = daemon.scrape()
                applied = sample(now, "propagator_rows_applied_total", source="event")
                return now if applied >= 10 else None

            after = wait_until(moved, timeout=30, what="rows_applied_total{source=event} >= 10")
            lag_count = "propagator_propagation_lag_seconds_count"
            assert sample(after, lag_count) > sample(before, lag_count)
            assert sample(after, "propagator_propagation_lag_seconds_sum") > 0
            assert sample(after, "propagator_propagation_lag_seconds_bucket", le="60.0") >= 1
            assert sample(after, "propagator_notifications_received_total") > sample(
                before, "propagator_notifications_received_total"
            )
            assert sample(after, "propagator_batches_applied_total", source="event") >= 1
            assert sample(after, "propagator_rows_failed_total", source="event") == 0
            assert databases.production.fab_orders() == databases.sandbox.fab_orders()

            status, body = daemon.get("/status")
            assert status == 200
            assert json.loads(body)["role"] == "leader"
            shown = run_cli(["status", "--url", f"http://127.0.0.1:{daemon.port}"], cli_env())
            assert shown.returncode == 0, shown.stderr
            assert "ready" in shown.stdout.splitlines()[1]
            assert re.search(r"^  role:\s+leader$", shown.stdout, re.M), shown.stdout

            promtool = shutil.which("promtool")
            if promtool is not None:
                exposition = daemon.get("/metrics")[1]
                checked = subprocess.run(
                    [promtool, "check", "metrics"],
                    input=exposition,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        blocker.close()
