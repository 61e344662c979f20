"""The daemon under faults: killed backends, restarted servers, a broken schema, two replicas."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psycopg
import pytest

from propagator.testing import DaemonRunner
from tests.conftest import Server
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import (
    converged,
    daemon_settings,
    differences,
    install_triggers,
    seed,
)

ROWS = 300


@pytest.fixture
def prepared(databases: DatabasePair) -> DatabasePair:
    """Triggers installed and ROWS matching rows on both sides."""
    install_triggers(databases, daemon_settings(databases))
    seed(databases, ROWS, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    return databases


class UpdateStream:
    """A production writer updating fab_order row after row until stopped, surviving outages."""

    def __init__(self, databases: DatabasePair) -> None:
        self.databases = databases
        self.halt = threading.Event()
        self.committed = 0
        self.thread = threading.Thread(target=self._run, name="update-stream", daemon=True)

    def _run(self) -> None:
        step = 0
        while not self.halt.is_set():
            try:
                with psycopg.connect(
                    self.databases.production.url, autocommit=True, connect_timeout=2
                ) as conn:
                    while not self.halt.is_set():
                        step += 1
                        conn.execute(
                            "UPDATE jobs SET fab_order = fab_order + 1 WHERE job = %s",
                            (step % ROWS + 1,),
                        )
                        self.committed += 1
            except psycopg.OperationalError:
                self.halt.wait(0.2)

    def __enter__(self) -> UpdateStream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.halt.set()
        self.thread.join(30)

    def wait_for(self, count: int) -> None:
        target = self.committed + count
        wait_until(lambda: self.committed >= target, timeout=60, what=f"{count} more updates")


def embedded(server: Server) -> Server:
    if server.embedded is None:
        pytest.skip("the server is given by URL and cannot be restarted by the tests")
    return server


@contextlib.contextmanager
def daemon_for(databases: DatabasePair, **overrides: str) -> Iterator[DaemonRunner]:
    with DaemonRunner(daemon_settings(databases, **overrides)) as running:
        running.wait_caught_up()
        yield running
    assert running.exit_code == 0


def test_killed_listener_backend_reconnects_and_converges(prepared: DatabasePair) -> None:
    """pg_terminate_backend on the listener: it reconnects, catches up and converges."""
    with daemon_for(prepared) as running:
        with UpdateStream(prepared) as stream:
            stream.wait_for(50)
            old_pid = running.daemon.listener.backend_pid
            prepared.production.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
            stream.wait_for(100)
            wait_until(
                lambda: running.daemon.listener.backend_pid not in (None, old_pid),
                what="a new listener connection",
            )
            stream.wait_for(50)
        wait_until(lambda: converged(prepared), what="convergence")
        catchups = running.metric(
            "propagator_reconcile_runs_total", source="catchup", result="success"
        )
        assert catchups >= 2
        assert running.metric("propagator_retries_total", cause="production_unavailable") >= 1


def test_killed_lock_backend_loses_then_regains_leadership(prepared: DatabasePair) -> None:
    """Terminating the lock session demotes the daemon; it re-elects itself and catches up."""
    with daemon_for(prepared) as running:
        lock_pid = running.daemon.lock.backend_pid
        prepared.sandbox.execute("SELECT pg_terminate_backend(%s)", (lock_pid,))
        prepared.production.execute("UPDATE jobs SET fab_order = 5555 WHERE job = 1")
        wait_until(
            lambda: (
                running.daemon.lock.backend_pid not in (None, lock_pid)
                and running.daemon.catchup_done
            ),
            what="leadership regained with a new lock session",
        )
        wait_until(lambda: converged(prepared), what="convergence")


@pytest.mark.slow
def test_production_restart_during_a_stream_converges(
    prepared: DatabasePair, production_server: Server
) -> None:
    """Restarting the production server mid-stream: the daemon reconnects and converges."""
    server = embedded(production_server)
    with daemon_for(prepared) as running, UpdateStream(prepared) as stream:
        stream.wait_for(100)
        server.embedded.restart()  # type: ignore[union-attr]
        stream.wait_for(200)
        wait_until(lambda: running.daemon.readiness()[0], timeout=60, what="ready again")
    wait_until(lambda: converged(prepared), timeout=60, what="convergence")
    assert differences(daemon_settings(prepared)) == 0


@pytest.mark.slow
def test_sandbox_restart_during_a_batch_converges(
    prepared: DatabasePair, sandbox_server: Server
) -> None:
    """Restarting the sandbox server while batches apply: no batch is lost, all converge."""
    server = embedded(sandbox_server)
    with daemon_for(prepared) as running, UpdateStream(prepared) as stream:
        wait_until(
            lambda: running.metric("propagator_batches_applied_total", source="event") >= 5,
            what="batches being applied",
        )
        server.embedded.restart()  # type: ignore[union-attr]
        stream.wait_for(200)
        wait_until(lambda: running.daemon.readiness()[0], timeout=60, what="ready again")
        stream.halt.set()
        wait_until(lambda: converged(prepared), timeout=60, what="convergence")
        assert running.metric("propagator_retries_total", cause="sandbox_unavailable") >= 1
    assert differences(daemon_settings(prepared)) == 0


@pytest.mark.slow
def test_dropped_sandbox_column_is_reported_and_retried_without_crashing(
    prepared: DatabasePair,
) -> None:
    """A renamed mapped column is a permanent error: retried slowly, healed once it returns."""
    with daemon_for(prepared) as running:
        prepared.sandbox.execute("ALTER TABLE jobs RENAME COLUMN fab_order TO fab_order_moved")
        prepared.production.execute("UPDATE jobs SET fab_order = 8080 WHERE job = 2")
        wait_until(
            lambda: running.metric("propagator_retries_total", cause="permanent") >= 1,
            what="a permanent-error retry",
        )
        assert running.alive
        assert "fab_order" in (running.daemon.last_error or "")
        prepared.sandbox.execute("ALTER TABLE jobs RENAME COLUMN fab_order_moved TO fab_order")
        wait_until(
            lambda: prepared.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 2") == 8080,
            what="the change applied once the column is back",
        )
        assert running.metric("propagator_retries_total", cause="permanent") <= 3


@pytest.mark.slow
def test_two_daemons_elect_one_writer_and_fail_over(prepared: DatabasePair) -> None:
    """Of two replicas exactly one leads; when its lock session dies the other takes over."""
    settings = daemon_settings(prepared)
    first = DaemonRunner(settings, instance_id="replica-a").start()
    second = DaemonRunner(settings, instance_id="replica-b").start()
    try:
        wait_until(
            lambda: {first.daemon.role, second.daemon.role} == {"leader", "standby"},
            what="one leader and one standby",
        )
        leader, standby = (first, second) if first.daemon.role == "leader" else (second, first)
        assert leader.metric("propagator_leader") == 1
        assert standby.metric("propagator_leader") == 0
        leader.wait_caught_up()
        prepared.production.execute("UPDATE jobs SET fab_order = 1 WHERE job <= 10")
        wait_until(lambda: converged(prepared), what="convergence through the leader")
        assert standby.metric("propagator_rows_applied_total", source="event") == 0
        assert standby.metric("propagator_batches_applied_total", source="catchup") == 0

        leader.stop()
        prepared.production.execute("UPDATE jobs SET fab_order = 2 WHERE job <= 20")
        standby.wait_caught_up()
        wait_until(lambda: converged(prepared), what="convergence through the new leader")
        assert standby.metric("propagator_leader") == 1
    finally:
        for replica in (first, second):
            if replica.alive:
                replica.stop()


@pytest.mark.slow
def test_listener_that_stops_hearing_its_heartbeat_is_replaced(
    prepared: DatabasePair, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listener whose own heartbeat stops coming back is treated as half-open and replaced."""
    with daemon_for(prepared, heartbeat_interval="200ms", heartbeat_timeout="1s") as running:
        daemon = running.daemon
        old_pid = daemon.listener.backend_pid
        conn = daemon.listener._conn
        assert conn is not None

        async def stop_hearing() -> None:
            # The socket stays healthy but no notification reaches this session any more.
            with contextlib.suppress(psycopg.Error):
                await conn.execute("UNLISTEN *")

        running.run_coroutine(stop_hearing, timeout=10)
        wait_until(
            lambda: daemon.listener.backend_pid not in (None, old_pid),
            what="a replaced listener connection",
        )
        assert "no heartbeat came back" in capsys.readouterr().out
        prepared.production.execute("UPDATE jobs SET fab_order = 31337 WHERE job = 3")
        wait_until(
            lambda: prepared.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 3") == 31337,
            what="a change through the new listener",
        )
