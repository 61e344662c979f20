"""Shared benchmark helpers: throwaway servers, fast data loading, honest measurements.

Servers are the same embedded PostgreSQL the tests use (``fsync=off``), one per
side, both on this machine. Data is generated inside each server with
``generate_series`` so loading ten million rows ships nothing over the wire.
Wall time and peak RSS are those of one child process (``os.wait4``), and bytes
are counted by a small TCP proxy in a separate, untimed run.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from propagator.demo.embedded import EmbeddedPostgres
from propagator.sql import load_sql

__all__ = [
    "JOBS_DDL",
    "ByteCounter",
    "CountingProxy",
    "Measurement",
    "differing_ids",
    "load_jobs",
    "machine_description",
    "make_differences",
    "median",
    "parse_diff",
    "run_measured",
    "servers",
]

JOBS_DDL = load_sql("sample/jobs.sql")
# Two releases per job, fab orders with repeats and cents, a few NULL colours.
_LOAD = """
INSERT INTO public.jobs (id, job, release, fab_order, paint_color, stage)
SELECT g, 100000 + (g + 1) / 2, CASE WHEN g %% 2 = 1 THEN 'A' ELSE 'B' END,
       ((g::bigint * 7919) %% 100000) / 100.0,
       CASE WHEN g %% 10 = 0 THEN NULL ELSE 'RAL ' || (g %% 9000) END,
       'stage ' || (g %% 7)
FROM generate_series(1, %(rows)s) AS g
"""


@contextlib.contextmanager
def servers(*names: str) -> Iterator[list[EmbeddedPostgres]]:
    """Start one embedded server per name; stop and delete them all afterwards."""
    started: list[EmbeddedPostgres] = []
    try:
        for name in names:
            started.append(EmbeddedPostgres(f"bench-{name}").start())
        yield started
    finally:
        for server in started:
            server.cleanup()


def load_jobs(url: str, rows: int) -> float:
    """Create and fill ``public.jobs`` with ``rows`` deterministic rows; seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.jobs")
        conn.execute(JOBS_DDL)
        conn.execute(_LOAD, {"rows": rows})
        conn.execute("VACUUM ANALYZE public.jobs")
    return time.perf_counter() - started


def parse_diff(text: str, rows: int) -> int:
    """``0``, ``100`` (rows) or ``1%`` (of the table) as a number of differing rows."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not match:
        raise ValueError(f"--diff must be a row count or a percentage, not {text!r}")
    value = float(match.group(1))
    count = round(rows * value / 100) if match.group(2) else int(value)
    if count > rows:
        raise ValueError(f"--diff {text} is more than the {rows} rows")
    return count


def differing_ids(rows: int, count: int) -> range:
    """Ids of ``count`` rows spread evenly over the table (scattered, not one block)."""
    if count == 0:
        return range(0)
    step = rows // count
    return range(step, step * count + 1, step)


def make_differences(url: str, rows: int, count: int) -> None:
    """Change ``fab_order`` of ``count`` scattered sandbox rows (repeatable: always +1)."""
    if count == 0:
        return
    ids = differing_ids(rows, count)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE public.jobs SET fab_order = fab_order + 1 "
            "WHERE id IN (SELECT generate_series(%s::bigint, %s::bigint, %s::bigint))",
            (ids.start, ids.stop - 1, ids.step),
        )


@dataclass
class Measurement:
    """One child process: wall seconds, peak resident set (MiB), exit code and output."""

    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(command: Sequence[str], env: Mapping[str, str]) -> Measurement:
    """Run ``command`` and take its own peak RSS from ``wait4`` (not the benchmark's)."""
    started = time.perf_counter()
    with (
        open(os.devnull, "rb") as stdin,
        subprocess.Popen(
            list(command),
            env=dict(env),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process,
    ):
        stdout, stderr = _drain(process)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    return Measurement(
        seconds,
        usage.ru_maxrss / 1024,  # Linux reports KiB
        process.returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
    )


def _drain(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Read both pipes to the end without reaping the child (``wait4`` must do that)."""
    assert process.stdout is not None
    assert process.stderr is not None
    chunks: dict[int, list[bytes]] = {process.stdout.fileno(): [], process.stderr.fileno(): []}
    open_fds = set(chunks)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                open_fds.discard(fd)
    return b"".join(chunks[process.stdout.fileno()]), b"".join(chunks[process.stderr.fileno()])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class ByteCounter:
    """Bytes the server sent to clients through a proxy (thread-safe)."""

    from_server: int = 0
    to_server: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, from_server: int = 0, to_server: int = 0) -> None:
        with self._lock:
            self.from_server += from_server
            self.to_server += to_server


class CountingProxy:
    """A loopback TCP proxy in front of one server that counts every byte both ways.

    Used only for the untimed "bytes transferred" run, so its own cost never
    shows in the timings.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counter = ByteCounter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()

    def reset(self) -> ByteCounter:
        old, self.counter = self.counter, ByteCounter()
        return old

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        counter = self.counter
        peers = {client: server, server: client}
        try:
            while True:
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    peers[sock].sendall(data)
                    if sock is server:
                        counter.add(from_server=len(data))
                    else:
                        counter.add(to_server=len(data))
        except OSError:
            return
        finally:
            client.close()
            server.close()


def machine_description(url: str) -> dict[str, Any]:
    """CPU count, memory and server version, for the README's figures."""
    memory_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "postgresql": version[0] if version else "?",
        "python": sys.version.split()[0],
    }
