"""The daemon as a subprocess, reached like an operator would: env, HTTP, logs, signals."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from propagator.demo.embedded import free_port
from tests.helpers import DatabasePair, refuse_internal_error, wait_until

__all__ = [
    "FAST_ENV",
    "DaemonProcess",
    "ValueStream",
    "converged",
    "daemon_process",
    "pair_env",
    "seed_equal",
]

FAST_ENV = {
    "PROPAGATOR_RECONCILE_INTERVAL": "0",
    "PROPAGATOR_HEARTBEAT_INTERVAL": "500ms",
    "PROPAGATOR_HEARTBEAT_TIMEOUT": "2s",
    "PROPAGATOR_RETRY_INITIAL": "50ms",
    "PROPAGATOR_RETRY_MAX": "1s",
    "PROPAGATOR_CONNECT_TIMEOUT": "2s",
    "PROPAGATOR_STANDBY_POLL_INTERVAL": "200ms",
    "PROPAGATOR_PERMANENT_RETRY_INTERVAL": "2s",
    "PROPAGATOR_SHUTDOWN_TIMEOUT": "10s",
    "PROPAGATOR_LOG_FORMAT": "json",
}


def pair_env(
    databases: DatabasePair,
    *,
    production_url: str | None = None,
    sandbox_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The CLI environment for the pair (URLs replaceable, e.g. by a proxy's), fast timings."""
    env = databases.env(**FAST_ENV)
    if production_url is not None:
        env["PRODUCTION_DATABASE_URL"] = production_url
    if sandbox_url is not None:
        env["SANDBOX_DATABASE_URL"] = sandbox_url
    env.update(extra)
    return env


def seed_equal(databases: DatabasePair, count: int) -> None:
    """``count`` jobs with fab_order = job on both sides."""
    rows = [(job, "A", job) for job in range(1, count + 1)]
    databases.production.insert_jobs(rows)
    databases.sandbox.insert_jobs(rows)


def converged(databases: DatabasePair) -> bool:
    return databases.production.fab_orders() == databases.sandbox.fab_orders()


class ValueStream:
    """A production writer giving random rows ever larger values, remembering every one.

    Each value is recorded for its key before the UPDATE runs, so ``history[key]``
    holds every value production may ever have had for that key (the seed included).
    """

    def __init__(self, databases: DatabasePair, rows: int, *, seed: int = 7) -> None:
        self.databases = databases
        self.rows = rows
        self.history: dict[tuple[int, str], set[Decimal]] = defaultdict(set)
        for job in range(1, rows + 1):
            self.history[(job, "A")].add(Decimal(job))
        self.committed = 0
        self.halt = threading.Event()
        self._chooser = random.Random(seed)
        self._next_value = 10 * rows
        self.thread = threading.Thread(target=self._run, name="value-stream", daemon=True)

    def _run(self) -> None:
        while not self.halt.is_set():
            try:
                with psycopg.connect(
                    self.databases.production.url, autocommit=True, connect_timeout=2
                ) as conn:
                    while not self.halt.is_set():
                        job = self._chooser.randint(1, self.rows)
                        self._next_value += 1
                        value = Decimal(self._next_value)
                        self.history[(job, "A")].add(value)
                        conn.execute(
                            "UPDATE jobs SET fab_order = %s WHERE job = %s AND release = 'A'",
                            (value, job),
                        )
                        self.committed += 1
                        if self.committed % 20 == 0:
                            self.halt.wait(0.01)  # a steady stream, not a saturating one
            except psycopg.OperationalError:
                self.halt.wait(0.2)

    def start(self) -> ValueStream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(30)

    def __enter__(self) -> ValueStream:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_for(self, count: int) -> None:
        target = self.committed + count
        wait_until(lambda: self.committed >= target, timeout=60, what=f"{count} more updates")

    def foreign_values(self) -> dict[tuple[int, str], object]:
        """Sandbox values production never had for that key (must always be empty)."""
        return {
            key: value
            for key, value in self.databases.sandbox.fab_orders().items()
            if value not in self.history.get(key, set())
        }


class DaemonProcess:
    """``python -m propagator run`` with its own HTTP port and a log file of JSON lines."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.args = tuple(args)  # after ``run``: --config FILE, say
        self.port = free_port()
        self.env = {**env, "PROPAGATOR_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "propagator", "run", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes] | None:
        """Status and body of ``GET path``, or None while nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def ready(self) -> bool:
        answer = self.get("/readyz")
        return answer is not None and answer[0] == 200

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait for /readyz 200 (leader, caught up); return how long it took."""
        started = time.monotonic()
        wait_until(lambda: self.ready() or not self.alive(), timeout=timeout, what="/readyz 200")
        assert self.alive(), (
            f"the daemon exited {self.process and self.process.returncode}:\n"
            + (self.log()[-3000:])
        )
        return time.monotonic() - started

    def status(self) -> dict[str, Any]:
        answer = self.get("/status")
        assert answer is not None
        assert answer[0] == 200, answer
        document: dict[str, Any] = json.loads(answer[1])
        return document

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        answer = self.get("/metrics")
        if answer is None or answer[0] != 200:
            return {}
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
            for family in text_string_to_metric_families(answer[1].decode())
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """The sum over the series carrying ``labels`` (whatever their mapping label)."""
        wanted = set(labels.items())
        return sum(
            value
            for (found, found_labels), value in self.metrics().items()
            if found == name and wanted <= set(found_labels)
        )

    def rss_kib(self) -> int:
        """Resident memory of the daemon process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (of one event, when named); other lines are skipped."""
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                document = json.loads(line)
                if isinstance(document, dict) and (name is None or document.get("event") == name):
                    found.append(document)
        return found

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful stop's exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        refuse_internal_error(code, self.log_path.read_text(errors="replace"))
        return code

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash or an OOM kill would do."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def daemon_process(env: Mapping[str, str], log_path: Path) -> Iterator[DaemonProcess]:
    """A started daemon, stopped (or killed, if it will not stop) afterwards."""
    daemon = DaemonProcess(env, log_path).start()
    try:
        yield daemon
    finally:
        if daemon.alive():
            try:
                daemon.stop(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
