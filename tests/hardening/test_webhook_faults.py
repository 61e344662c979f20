"""Webhooks under faults: a receiver down for 30 s, a daemon SIGKILLed mid-request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from propagator.services.triggers import install
from propagator.settings import load_settings
from propagator.testing import DaemonRunner
from tests.hardening.support import DaemonProcess, pair_env, seed_equal
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import daemon_settings, install_triggers, seed
from tests.integration.webhook_support import Received, Receiver, receiving, webhook


def _history_ids(databases: DatabasePair) -> list[int]:
    rows = databases.sandbox.fetchall("SELECT id FROM propagator.sync_history ORDER BY id")
    return [row[0] for row in rows]


@pytest.mark.slow
def test_a_receiver_down_for_30_seconds_gets_everything_in_order_once_back(
    databases: DatabasePair,
) -> None:
    """Changes made while the receiver is down wait; the endpoint is marked failing; once the
    receiver is back every change arrives, each once, in history order, and the mark clears."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 300, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    receiver = Receiver().start()
    port = receiver.port
    endpoint = webhook(settings, receiver.url, failing_after="10s", retry_max="3s", max_batch=50)
    with DaemonRunner(settings, webhooks=[endpoint]) as running:
        running.wait_caught_up()
        databases.production.execute("UPDATE jobs SET fab_order = 1000 + job WHERE job <= 100")
        wait_until(lambda: len(receiver.delivered_ids()) == 100, what="the first 100 changes")
        receiver.stop()
        down_since = time.monotonic()
        for step in range(3):  # changes keep coming while it is down
            databases.production.execute(
                "UPDATE jobs SET fab_order = 2000 + job WHERE job > 100 + 60 * %s "
                "AND job <= 160 + 60 * %s",
                (step, step),
            )
            time.sleep(8)
        wait_until(
            lambda: running.metric("propagator_webhook_failing", endpoint="hook") == 1,
            timeout=20,
            what="the endpoint marked failing",
        )
        assert (
            running.metric(
                "propagator_webhook_deliveries_total", endpoint="hook", result="unreachable"
            )
            >= 3
        )
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
        back = Receiver(port=port).start()
        try:
            wait_until(lambda: len(back.delivered_ids()) >= 180, timeout=30, what="the backlog")
            wait_until(
                lambda: running.metric("propagator_webhook_failing", endpoint="hook") == 0,
                what="the failing mark cleared",
            )
        finally:
            back.stop()
    ids = receiver.delivered_ids() + back.delivered_ids()
    assert ids == _history_ids(databases)
    assert len(ids) == 280


@pytest.mark.slow
def test_a_daemon_killed_mid_request_resumes_from_its_cursor_and_loses_nothing(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """SIGKILL while a request is in flight: after a restart delivery resumes from the cursor;
    every change arrives, a repeat only ever repeats a whole earlier request (same ids)."""
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
    )
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, settings)
    seed_equal(databases, 400)
    in_flight = threading.Event()

    def slow_answer(_request: Received) -> int:
        in_flight.set()
        time.sleep(0.5)
        return 200

    with receiving(answer=slow_answer) as receiver:
        config = tmp_path / "propagator.toml"
        config.write_text(
            f'[[webhooks]]\nname = "hook"\nurl = "{receiver.url}"\nmax_batch = 40\n'
            'max_wait = "0s"\nretry_initial = "100ms"\nretry_max = "1s"\n'
        )
        log = tmp_path / "daemon.log"
        env = pair_env(databases)
        daemon = DaemonProcess(env, log, ["--config", str(config)]).start()
        daemon.wait_ready()
        databases.production.execute("UPDATE jobs SET fab_order = fab_order + 10000")
        wait_until(lambda: len(receiver.requests) >= 3, timeout=60, what="three requests")
        in_flight.clear()
        wait_until(in_flight.is_set, what="a request in flight")
        daemon.kill()
        killed_after = len(receiver.requests)
        daemon = DaemonProcess(env, log, ["--config", str(config)]).start()
        try:
            daemon.wait_ready()
            wait_until(
                lambda: set(receiver.delivered_ids()) >= set(_history_ids(databases)),
                timeout=90,
                what="every change delivered after the restart",
            )
        finally:
            daemon.stop()
    ids = _history_ids(databases)
    assert len(ids) == 400
    assert killed_after < len(receiver.requests)
    seen: dict[str, list[int]] = {}
    first_appearance: list[int] = []
    for request in receiver.accepted():
        delivery = request.headers["propagator-delivery"]
        assert seen.setdefault(delivery, request.ids) == request.ids  # a repeat is the same
        first_appearance += [i for i in request.ids if i not in first_appearance]
    assert first_appearance == ids
