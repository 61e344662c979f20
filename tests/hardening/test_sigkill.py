"""Data safety under SIGKILL: kill the daemon at random moments of a stream of updates.

Every value production is given is recorded per key (values only ever grow), so
a sandbox value outside that key's history would be one production never had.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from propagator.services.triggers import install
from propagator.settings import load_settings
from tests.hardening.support import (
    DaemonProcess,
    ValueStream,
    converged,
    pair_env,
    seed_equal,
)
from tests.helpers import DatabasePair, wait_until

ROWS = 200
ITERATIONS = 15


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_foreign_value(
    databases: DatabasePair, tmp_path: Path, measure: Callable[..., float]
) -> None:
    """15 SIGKILLs mid-stream: the sandbox only ever holds values production had, then converges."""
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
    )
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, settings)
    seed_equal(databases, ROWS)
    env = pair_env(databases)
    chooser = random.Random(20240611)
    log = tmp_path / "daemon.log"
    kills: list[float] = []
    with ValueStream(databases, ROWS) as stream:
        for iteration in range(ITERATIONS):
            daemon = DaemonProcess(env, log).start()
            wait_until(
                lambda d=daemon, n=iteration: len(d.events("daemon_starting")) > n,
                timeout=30,
                what="the daemon process running",
            )
            # Sometimes during the connect or the catch-up, sometimes amid event batches.
            lifetime = chooser.uniform(0.0, 2.5)
            time.sleep(lifetime)
            daemon.kill()
            kills.append(lifetime)
            assert stream.foreign_values() == {}
        stream.wait_for(100)
    committed = stream.committed
    assert committed > 500
    daemon = DaemonProcess(env, log).start()
    try:
        restarted = time.monotonic()
        daemon.wait_ready()
        wait_until(lambda: converged(databases), timeout=60, what="convergence after the kills")
        measure("converged after the last restart", time.monotonic() - restarted)
        assert stream.foreign_values() == {}
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill()
    measure("updates committed during the kill loop", committed, unit="updates")
    measure("median lifetime before SIGKILL", statistics.median(kills))
    assert len(daemon.events("daemon_starting")) == ITERATIONS + 1
    caught_up = len([e for e in daemon.events("reconcile_finished") if e["source"] == "catchup"])
    measure("kills that came after a finished catch-up", caught_up - 1, unit="of 15")
