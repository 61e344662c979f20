"""Durability of logical capture: a slot keeps what a killed daemon had not written yet.

Periodic reconcile off, a steady stream of production updates, the daemon
SIGKILLed five times at random moments and started again: afterwards the
sandbox equals production and no reconcile ever ran, so the slot alone carried
every change across the kills.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg
import pytest

from propagator.services.capture import install
from propagator.services.capture_plan import logical_targets
from propagator.settings import load_settings
from propagator.settings.mappings import watched_tables
from tests.hardening.support import DaemonProcess, ValueStream, converged, pair_env, seed_equal
from tests.helpers import DatabasePair, wait_until

ROWS = 200
KILLS = 5


@pytest.mark.slow
def test_five_sigkills_under_load_lose_nothing_and_need_no_reconcile(
    logical_databases: DatabasePair, tmp_path: Path
) -> None:
    databases = logical_databases
    slot = databases.production.name
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        capture="logical",
        logical_slot=slot,
    )
    (target,) = logical_targets(watched_tables([settings]))
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, target)
    seed_equal(databases, ROWS)
    env = pair_env(
        databases,
        PROPAGATOR_CAPTURE="logical",
        PROPAGATOR_LOGICAL_SLOT=slot,
        PROPAGATOR_RECONCILE_INTERVAL="0",
    )
    chooser = random.Random(20261206)
    first = DaemonProcess(env, tmp_path / "first.log").start()
    first.wait_ready()  # a new slot: the one catch-up it is owed, before any kill
    databases.production.execute("UPDATE jobs SET fab_order = fab_order WHERE job = 1")
    assert first.stop() == 0
    log = tmp_path / "daemon.log"
    with ValueStream(databases, ROWS) as stream:
        for kill in range(KILLS):
            daemon = DaemonProcess(env, log).start()
            daemon.wait_ready()
            stream.wait_for(50)  # changes in flight when the kill comes
            time.sleep(chooser.uniform(0.0, 1.5))
            daemon.kill()
            assert stream.foreign_values() == {}, f"after kill {kill + 1}"
        stream.wait_for(100)  # and more while nobody reads the slot
    daemon = DaemonProcess(env, log).start()
    try:
        daemon.wait_ready()
        wait_until(lambda: converged(databases), timeout=60, what="convergence after the kills")
        assert stream.foreign_values() == {}
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill()
    assert len(daemon.events("daemon_starting")) == KILLS + 1
    assert daemon.events("reconcile_started") == []  # the slot carried everything
    assert len(daemon.events("slot_resumed")) >= KILLS + 1
    assert first.events("slot_first_read")
