"""``propagator run`` as a process: exit codes, SIGTERM during a stream, SIGKILL failover."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from propagator.demo.embedded import free_port
from tests.helpers import DatabasePair, refuse_internal_error, run_cli, wait_until
from tests.integration.support import (
    converged,
    daemon_settings,
    differences,
    install_triggers,
    seed,
)

ROWS = 200
FAST_ENV = {
    "PROPAGATOR_RECONCILE_INTERVAL": "0",
    "PROPAGATOR_HEARTBEAT_INTERVAL": "500ms",
    "PROPAGATOR_HEARTBEAT_TIMEOUT": "3s",
    "PROPAGATOR_RETRY_INITIAL": "50ms",
    "PROPAGATOR_RETRY_MAX": "1s",
    "PROPAGATOR_STANDBY_POLL_INTERVAL": "200ms",
    "PROPAGATOR_SHUTDOWN_TIMEOUT": "10s",
}


class DaemonProcess:
    """``python -m propagator run`` with its own HTTP port and captured JSON logs."""

    def __init__(self, databases: DatabasePair, **env: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "propagator", "run"],
            env=databases.env(**FAST_ENV, PROPAGATOR_HTTP_PORT=str(self.port), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=2) as r:
                answer: dict[str, Any] = json.load(r)
                return answer
        except OSError:
            return None

    def role(self) -> str | None:
        status = self.status()
        return None if status is None else status["role"]

    def caught_up(self) -> bool:
        status = self.status()
        return bool(status and status["role"] == "leader" and status["catchup_done"])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        refuse_internal_error(code, self.output())
        return code

    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def daemon_process(databases: DatabasePair, **env: str) -> Iterator[DaemonProcess]:
    process = DaemonProcess(databases, **env)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.wait()


@pytest.fixture
def prepared(databases: DatabasePair) -> DatabasePair:
    install_triggers(databases, daemon_settings(databases))
    seed(databases, ROWS, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    return databases


def test_missing_database_url_is_a_configuration_error(databases: DatabasePair) -> None:
    """Without SANDBOX_DATABASE_URL, run exits 2 with one line naming the variable."""
    env = databases.env()
    del env["SANDBOX_DATABASE_URL"]
    result = run_cli(["run"], env, timeout=60)
    assert result.returncode == 2
    assert "SANDBOX_DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_invalid_setting_is_a_configuration_error(databases: DatabasePair) -> None:
    """A bad duration exits 2 with one line naming the setting, before connecting anywhere."""
    result = run_cli(["run"], databases.env(PROPAGATOR_DEBOUNCE_QUIET="soon"), timeout=60)
    assert result.returncode == 2
    assert "PROPAGATOR_DEBOUNCE_QUIET" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_http_port_is_a_configuration_error(prepared: DatabasePair) -> None:
    """An HTTP port already taken stops the daemon at start with exit code 2."""
    with daemon_process(prepared) as first:
        wait_until(first.caught_up, what="the first daemon")
        result = run_cli(["run"], prepared.env(**FAST_ENV, PROPAGATOR_HTTP_PORT=str(first.port)))
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    assert result.returncode == 2
    assert "cannot serve HTTP" in result.stderr


@pytest.mark.slow
def test_sigterm_during_a_stream_exits_zero_and_loses_nothing(prepared: DatabasePair) -> None:
    """SIGTERM mid-stream: exit 0, every sandbox value one production really had, rest caught up."""
    history: dict[int, set[Decimal]] = {job: {Decimal(job)} for job in range(1, ROWS + 1)}
    halt = threading.Event()

    def stream() -> None:
        with psycopg.connect(prepared.production.url, autocommit=True) as conn:
            step = 0
            while not halt.is_set():
                step += 1
                job = step % ROWS + 1
                (value,) = conn.execute(
                    "UPDATE jobs SET fab_order = fab_order + 1 WHERE job = %s RETURNING fab_order",
                    (job,),
                ).fetchone()  # type: ignore[misc]
                history[job].add(value)

    with daemon_process(prepared) as daemon:
        wait_until(daemon.caught_up, what="a caught-up daemon")
        writer = threading.Thread(target=stream, daemon=True)
        writer.start()
        wait_until(
            lambda: (daemon.status() or {}).get("last_batch") is not None, what="batches applied"
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        halt.set()
        writer.join(10)
    events = [event["event"] for event in daemon.events()]
    assert "shutdown_requested" in events
    assert "drain_finished" in events
    assert events[-1] == "daemon_stopped"
    for job, value in prepared.sandbox.fab_orders().items():
        assert value in history[job[0]], f"sandbox {job} holds {value}, never a production value"

    with daemon_process(prepared) as restarted:
        wait_until(restarted.caught_up, what="the catch-up after restart")
        wait_until(lambda: converged(prepared), what="convergence")
        restarted.signal(signal.SIGINT)
        assert restarted.wait() == 0
    assert differences(daemon_settings(prepared)) == 0


@pytest.mark.slow
def test_sigkill_of_the_leader_makes_the_standby_take_over(prepared: DatabasePair) -> None:
    """Two daemons: exactly one leads; SIGKILL it and the other takes over and converges."""
    with daemon_process(prepared) as first, daemon_process(prepared) as second:
        wait_until(
            lambda: sorted([first.role() or "", second.role() or ""]) == ["leader", "standby"],
            what="one leader and one standby",
        )
        leader, standby = (first, second) if first.role() == "leader" else (second, first)
        wait_until(leader.caught_up, what="the leader's catch-up")
        prepared.production.execute("UPDATE jobs SET fab_order = 0 WHERE job <= 20")
        wait_until(lambda: converged(prepared), what="convergence through the leader")

        leader.signal(signal.SIGKILL)
        assert leader.wait() == -signal.SIGKILL
        prepared.production.execute("UPDATE jobs SET fab_order = -1 WHERE job <= 40")
        wait_until(standby.caught_up, timeout=30, what="the standby's takeover")
        wait_until(lambda: converged(prepared), what="convergence through the new leader")
        standby.signal(signal.SIGTERM)
        assert standby.wait() == 0
    takeover = [e for e in standby.events() if e["event"] == "leadership_acquired"]
    assert len(takeover) == 1
