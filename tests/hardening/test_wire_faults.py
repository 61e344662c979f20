"""Faults on the wire between the daemon and each database, through the TCP fault proxy.

The daemon runs as a subprocess whose database URLs point at two proxies. After
every fault it must recover by itself, within a bounded time, and converge the
sandbox; each recovery time is measured and printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from propagator.services.triggers import install
from propagator.settings import load_settings
from tests.faultproxy import FaultProxy
from tests.hardening.support import (
    DaemonProcess,
    ValueStream,
    converged,
    daemon_process,
    pair_env,
    seed_equal,
)
from tests.helpers import DatabasePair, wait_until

pytestmark = pytest.mark.slow  # fault injection through the TCP proxy: seconds per fault

ROWS = 300
HEARTBEAT_TIMEOUT = 2.0
LISTENER = "propagator listener"


@dataclass
class Wired:
    databases: DatabasePair
    production: FaultProxy
    sandbox: FaultProxy
    daemon: DaemonProcess

    def wait_converged(self, timeout: float = 60) -> None:
        wait_until(lambda: converged(self.databases), timeout=timeout, what="convergence")


def install_triggers(databases: DatabasePair) -> None:
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
    )
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, settings)


@pytest.fixture
def wired(databases: DatabasePair, tmp_path: Path) -> Iterator[Wired]:
    """ROWS equal rows, triggers, and a caught-up daemon reaching both databases via proxies."""
    install_triggers(databases)
    seed_equal(databases, ROWS)
    with (
        FaultProxy.for_url(databases.production.url) as production,
        FaultProxy.for_url(databases.sandbox.url) as sandbox,
    ):
        env = pair_env(
            databases,
            production_url=production.url_for(databases.production.url),
            sandbox_url=sandbox.url_for(databases.sandbox.url),
            PROPAGATOR_HEARTBEAT_TIMEOUT=f"{HEARTBEAT_TIMEOUT}s",
        )
        with daemon_process(env, tmp_path / "daemon.log") as daemon:
            daemon.wait_ready()
            yield Wired(databases, production, sandbox, daemon)
            production.pass_through()
            sandbox.pass_through()
            assert daemon.stop() == 0, daemon.log()[-3000:]


def test_half_open_listener_is_detected_within_heartbeat_timeout(
    wired: Wired, measure: Callable[..., float]
) -> None:
    """A black-holed listener is replaced within ~heartbeat_timeout; missed changes converge."""
    lost_before = len(wired.daemon.events("listener_lost"))
    assert wired.production.blackhole(match=LISTENER) == 1
    started = time.monotonic()
    wired.databases.production.execute("UPDATE jobs SET fab_order = -7 WHERE job = 7")
    wait_until(
        lambda: len(wired.daemon.events("listener_lost")) > lost_before,
        timeout=4 * HEARTBEAT_TIMEOUT,
        interval=0.02,
        what="the half-open listener detected",
    )
    detected = measure("half-open listener detected after", time.monotonic() - started)
    wired.wait_converged()
    measure("converged after the black-hole began", time.monotonic() - started)
    # Heartbeats are checked each second: detection takes heartbeat_timeout plus at most ~1.5 s.
    assert detected < HEARTBEAT_TIMEOUT + 2.0
    assert wired.daemon.metric("propagator_listener_connected") == 1
    assert wired.daemon.alive()
    # The abandoned session must not linger on the server, LISTENing without reading
    # (that would stop the server from truncating the NOTIFY queue).
    wait_until(
        lambda: sessions(wired.databases, LISTENER) == 1,
        timeout=10,
        what="only the new listener session left on production",
    )


def sessions(databases: DatabasePair, application_prefix: str) -> int:
    """Server-side sessions whose application name starts with the prefix."""
    return int(
        databases.production.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
            "AND datname = current_database()",
            [application_prefix + "%"],
        )
    )


def test_added_latency_slows_but_never_breaks_propagation(
    wired: Wired, measure: Callable[..., float]
) -> None:
    """With 50 ms added on every chunk both ways, changes still propagate and converge."""
    wired.production.set_mode("latency", latency=0.05)
    wired.sandbox.set_mode("latency", latency=0.05)
    started = time.monotonic()
    wired.databases.production.execute("UPDATE jobs SET fab_order = 4711 WHERE job = 11")
    wait_until(
        lambda: wired.databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 11") == 4711,
        what="one change through the slow wires",
    )
    measure("one change propagated with 50 ms latency per chunk", time.monotonic() - started)
    with ValueStream(wired.databases, ROWS) as stream:
        stream.wait_for(200)
    started = time.monotonic()
    wired.wait_converged()
    measure("converged after a 200-update stream over slow wires", time.monotonic() - started)
    assert wired.daemon.alive()


@pytest.mark.slow
@pytest.mark.parametrize("side", ["production", "sandbox"])
def test_connections_reset_mid_transaction_recover(
    wired: Wired, side: str, measure: Callable[..., float]
) -> None:
    """RSTs to every connection of one side, mid-stream, three times: it recovers and converges."""
    proxy = wired.production if side == "production" else wired.sandbox
    with ValueStream(wired.databases, ROWS) as stream:
        stream.wait_for(100)
        for _ in range(3):
            proxy.reset_all()
            stream.wait_for(50)
        # The production side's listener reconnects; the sandbox side's leader lock is retaken.
        event = "listener_reconnected" if side == "production" else "leadership_acquired"
        before = len(wired.daemon.events(event))
        proxy.reset_all()
        reset_at = time.monotonic()
        wait_until(
            lambda: len(wired.daemon.events(event)) > before and wired.daemon.ready(),
            timeout=60,
            interval=0.02,
            what=f"{event} and ready again",
        )
        recovered = time.monotonic() - reset_at
        measure(f"reconnected and ready after {side} connections reset", recovered)
        stream.wait_for(50)
    stopped = time.monotonic()
    wired.wait_converged()
    measure(f"converged after the stream stopped ({side} resets)", time.monotonic() - stopped)
    assert stream.foreign_values() == {}
    # The resets were seen: as failed work, retried, or (sandbox writers since they check a
    # kept connection before use) as a connection replaced before it failed anything.
    retried = wired.daemon.metric("propagator_retries_total", cause=f"{side}_unavailable")
    replaced = wired.daemon.events("writer_reconnecting") if side == "sandbox" else []
    assert retried >= 1 or replaced


@pytest.mark.slow
def test_refused_and_reset_databases_then_recovery(
    wired: Wired, measure: Callable[..., float]
) -> None:
    """Both databases unreachable for 3 s: the daemon lives, reports unready, then converges."""
    for proxy in (wired.production, wired.sandbox):
        proxy.refuse()
        proxy.reset_all()
    wired.databases.production.execute("UPDATE jobs SET fab_order = 0 WHERE job <= 20")
    wait_until(lambda: not wired.daemon.ready(), what="/readyz to say not ready")
    time.sleep(3)  # the outage itself: the daemon must ride it out
    healthz = wired.daemon.get("/healthz")
    assert healthz is not None
    assert healthz[0] == 200, healthz
    assert wired.daemon.alive()
    for proxy in (wired.production, wired.sandbox):
        proxy.accept_again()
    back = time.monotonic()
    wait_until(wired.daemon.ready, timeout=60, what="ready again")
    measure("ready again after the outage ended", time.monotonic() - back)
    wired.wait_converged()
    measure("converged after the outage ended", time.monotonic() - back)


@pytest.mark.slow
def test_black_holed_sandbox_then_released_converges(
    wired: Wired, measure: Callable[..., float]
) -> None:
    """Every sandbox connection silently stalled for 4 s mid-stream; once released, it converges."""
    with ValueStream(wired.databases, ROWS) as stream:
        stream.wait_for(50)
        wired.sandbox.blackhole()
        stream.wait_for(100)
        time.sleep(4)  # the stall itself: nothing may be lost meanwhile
        wired.sandbox.set_mode("pass")
        wired.sandbox.pass_through()
        released = time.monotonic()
        stream.wait_for(50)
    wait_until(wired.daemon.ready, timeout=60, what="ready again")
    wired.wait_converged()
    measure("converged after the sandbox black-hole ended", time.monotonic() - released)
    assert stream.foreign_values() == {}


def test_half_open_leader_lock_is_given_up_within_its_probe_timeout(
    wired: Wired, measure: Callable[..., float]
) -> None:
    """A black-holed lock connection costs leadership within ~probe timeout, then it is regained."""
    lost_before = len(wired.daemon.events("leadership_lost"))
    acquired_before = len(wired.daemon.events("leadership_acquired"))
    assert wired.sandbox.blackhole(match="propagator leader") == 1
    started = time.monotonic()
    wait_until(
        lambda: len(wired.daemon.events("leadership_lost")) > lost_before,
        timeout=4 * HEARTBEAT_TIMEOUT,
        interval=0.02,
        what="the half-open lock connection given up",
    )
    detected = measure("half-open leader lock given up after", time.monotonic() - started)
    wait_until(
        lambda: len(wired.daemon.events("leadership_acquired")) > acquired_before,
        timeout=30,
        what="leadership regained on a new connection",
    )
    measure("leadership regained after", time.monotonic() - started)
    wired.databases.production.execute("UPDATE jobs SET fab_order = -8 WHERE job = 8")
    wired.wait_converged()
    # The lock is probed every standby_poll_interval (1 s); the probe gives up after
    # min(heartbeat_timeout, connect_timeout), without waiting for psycopg's cancel.
    assert detected < HEARTBEAT_TIMEOUT + 2.0
    assert wired.daemon.alive()
