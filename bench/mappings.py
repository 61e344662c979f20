"""Twenty named mappings in one ``propagator run``, against a daemon serving one of them.

    python bench/mappings.py --rows 20000 --clients 4 --duration 15 --repeat 3

Two embedded servers (production and sandbox); twenty tables ``t01`` … ``t20``
``(id int primary key, val int)`` with ``--rows`` rows each, equal on both. Two
config files: ``twenty.toml`` holds twenty ``[[mappings]]`` (``tNN`` → sandbox
``tNN``, ``val`` mirrored by ``id``), ``one.toml`` only ``t01``'s; the periodic
reconcile is an hour away in both, so only the event path runs while measured.
``propagator triggers install --config twenty.toml`` (through the command line)
installs the twenty trigger sets once.

Each round starts the real daemon, ``python -m propagator run --config FILE``,
as a child process (the two URLs and a free HTTP port in its environment, its
log in a file) for each design in turn, the order flipping every round, and:

* waits for ``/readyz`` to answer 200 (every mapping caught up as leader);
* drives the busy table only: ``--clients`` threads, each with its own key
  range and connection (autocommit), run ``UPDATE t01 SET val = val + 1 WHERE
  id = …`` on random keys of its range as fast as they go for ``--duration``
  seconds;
* waits until the sandbox's ``t01`` equals production (``val`` only grows and
  the sandbox never runs ahead, so equal sums mean equal tables).

Throughput is committed updates / (load start → sandbox converged). Every
0.5 s from load start to convergence a sampler counts the daemon's connections
(``pg_stat_activity``, ``application_name LIKE 'propagator%'``) on both servers,
by database and by name, and reads the daemon's ``VmRSS`` from
``/proc/PID/status``; the peaks are kept. ``VmHWM`` (the peak since the process
started, catch-up reconciles included) is read just before the SIGTERM, and the
daemon's CPU time over the measured span from ``/proc/PID/stat``. Figures
are medians over the rounds; the connection and memory targets are judged on
the worst round. The machine's one-minute load average at each run's end is
printed too: other processes on the machine move the rates more than anything
measured here, and the daemon's CPU per 1,000 updates is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_description, servers
from propagator.demo.embedded import free_port

TABLES = 20
BUSY = "t01"
DESIGNS = ("one", "twenty")
LABELS = {"one": "1 mapping", "twenty": f"{TABLES} mappings"}
SAMPLE_SECONDS = 0.5
CONVERGE_DEADLINE = 180.0
RSS_TARGET_BYTES = 150 * 1000 * 1000  # 150 MB
CONNECTION_TARGET = 2  # per production database
THROUGHPUT_TARGET = 0.90  # 20 mappings / 1 mapping, the busy mapping's event path

# ``propagator listener host-1234-0a1b2c``: the instance id differs in every run.
INSTANCE_ID = re.compile(r" \S+-\d+-[0-9a-f]{6}$")
CONNECTIONS_SQL = """
SELECT datname, application_name, count(*)
FROM pg_stat_activity
WHERE application_name LIKE 'propagator%' AND pid <> pg_backend_pid()
GROUP BY datname, application_name
"""


def table_names() -> list[str]:
    return [f"t{number:02d}" for number in range(1, TABLES + 1)]


def create_tables(url: str, rows: int) -> None:
    """The twenty tables, ``val`` = 0 on every row (so both sides start equal)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in table_names():
            conn.execute(f"DROP TABLE IF EXISTS public.{name}")
            conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, val int NOT NULL)")
            conn.execute(
                f"INSERT INTO public.{name} (id, val) SELECT g, 0 FROM generate_series(1, %s) g",
                (rows,),
            )
            conn.execute(f"VACUUM ANALYZE public.{name}")


def write_config(path: Path, names: list[str]) -> None:
    """A config file with one ``[[mappings]]`` per table; the URLs come from the environment."""
    lines = [
        'key_columns = ["id"]',
        'field_mappings = ["val"]',
        'reconcile_interval = "1h"',
        "",
    ]
    for name in names:
        lines += [
            "[[mappings]]",
            f'name = "{name}"',
            f'production_table = "public.{name}"',
            f'sandbox_table = "public.{name}"',
            "",
        ]
    path.write_text("\n".join(lines))


def daemon_environment(production_url: str, sandbox_url: str, port: int) -> dict[str, str]:
    """This environment without any propagator setting, plus the two URLs and the port."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPAGATOR_")
        and key not in ("PRODUCTION_DATABASE_URL", "SANDBOX_DATABASE_URL")
    }
    env.update(
        PRODUCTION_DATABASE_URL=production_url,
        SANDBOX_DATABASE_URL=sandbox_url,
        PROPAGATOR_HTTP_PORT=str(port),
        PROPAGATOR_LOG_FORMAT="json",
        PROPAGATOR_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
    )
    return env


def install_triggers(config: Path, production_url: str, sandbox_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "propagator", "triggers", "install", "--config", str(config)],
        env=daemon_environment(production_url, sandbox_url, 0),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"triggers install failed:\n{result.stdout}\n{result.stderr}")


def table_sum(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT coalesce(sum(val), 0) FROM public.{table}").fetchone()
        return int(row[0]) if row else 0


def process_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in bytes (empty once it is gone)."""
    figures: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    figures[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return figures


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Peaks:
    """What the sampler saw: peak connections (production and sandbox) and peak RSS."""

    production_by_database: dict[str, int] = field(default_factory=dict)
    production_names_at_peak: dict[str, int] = field(default_factory=dict)
    sandbox_by_database: dict[str, int] = field(default_factory=dict)
    sandbox_names_at_peak: dict[str, int] = field(default_factory=dict)
    rss_bytes: int = 0
    samples: int = 0

    @property
    def production(self) -> int:
        return max(self.production_by_database.values(), default=0)

    @property
    def sandbox(self) -> int:
        return max(self.sandbox_by_database.values(), default=0)


class Sampler:
    """Every ``SAMPLE_SECONDS``: the daemon's connections on both servers and its RSS."""

    def __init__(self, pid: int, production_url: str, sandbox_url: str) -> None:
        self.pid = pid
        self.urls = {"production": production_url, "sandbox": sandbox_url}
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with (
                psycopg.connect(
                    self.urls["production"], autocommit=True, application_name="bench sampler"
                ) as production,
                psycopg.connect(
                    self.urls["sandbox"], autocommit=True, application_name="bench sampler"
                ) as sandbox,
            ):
                while True:
                    self._sample(production, sandbox)
                    if self._stop.wait(SAMPLE_SECONDS):
                        return
        except BaseException as error:  # reported by the round, never swallowed
            self.error = error

    def _sample(self, production: psycopg.Connection, sandbox: psycopg.Connection) -> None:
        peaks = self.peaks
        for conn, by_database, names_at_peak in (
            (production, peaks.production_by_database, peaks.production_names_at_peak),
            (sandbox, peaks.sandbox_by_database, peaks.sandbox_names_at_peak),
        ):
            totals: Counter[str] = Counter()
            names: Counter[str] = Counter()
            for database, name, count in conn.execute(CONNECTIONS_SQL):
                totals[database] += count
                names[f"{database}: {INSTANCE_ID.sub('', name)}"] += count
            for database, total in totals.items():
                if total > by_database.get(database, 0):
                    by_database[database] = total
            if sum(totals.values()) > sum(names_at_peak.values()):
                names_at_peak.clear()
                names_at_peak.update(names)
        rss = process_status(self.pid).get("VmRSS", 0)
        peaks.rss_bytes = max(peaks.rss_bytes, rss)
        peaks.samples += 1


class Load:
    """``clients`` threads updating random keys of their own range of the busy table."""

    def __init__(self, url: str, rows: int, clients: int, seconds: float) -> None:
        self.url = url
        self.seconds = seconds
        bounds = [1 + rows * n // clients for n in range(clients + 1)]
        self.ranges = [(bounds[n], bounds[n + 1] - 1) for n in range(clients)]
        self.committed = [0] * clients
        self.errors: list[BaseException] = []

    def run(self) -> int:
        """Run the load to its end; the number of committed updates."""
        deadline = time.monotonic() + self.seconds
        threads = [
            threading.Thread(target=self._client, args=(n, deadline), name=f"load-{n}")
            for n in range(len(self.ranges))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.errors:
            raise RuntimeError(f"a load client failed: {self.errors[0]!r}") from self.errors[0]
        return sum(self.committed)

    def _client(self, number: int, deadline: float) -> None:
        low, high = self.ranges[number]
        pick = random.Random(number).randint
        statement = f"UPDATE public.{BUSY} SET val = val + 1 WHERE id = %s"
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="bench load") as conn:
                done = 0
                while time.monotonic() < deadline:
                    conn.execute(statement, (pick(low, high),), prepare=True)
                    done += 1
                self.committed[number] = done
        except BaseException as error:
            self.errors.append(error)


@dataclass
class Round:
    design: str
    committed: int
    committed_per_second: float
    converged_per_second: float
    drain_seconds: float
    cpu_cores: float
    peaks: Peaks
    hwm_bytes: int
    load_average: float
    cpu_seconds: float

    @property
    def kept_up(self) -> float:
        """Converged per second over committed per second during the load."""
        return self.converged_per_second / self.committed_per_second

    @property
    def cpu_ms_per_thousand(self) -> float:
        return self.cpu_seconds * 1000 / self.committed * 1000


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Until ``/readyz`` answers 200; a daemon that exits first is an error."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/readyz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the daemon was not ready within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM and wait; a daemon that does not stop in time is killed and reported."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(
            f"the daemon did not stop within 60 s of SIGTERM:\n{tail(log)}"
        ) from None
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code} after SIGTERM:\n{tail(log)}")


def run_round(
    design: str,
    config: Path,
    production_url: str,
    sandbox_url: str,
    args: argparse.Namespace,
    log: Path,
) -> Round:
    before = table_sum(production_url, BUSY)
    if table_sum(sandbox_url, BUSY) != before:
        raise RuntimeError(f"the sandbox's {BUSY} differs from production before the run")
    port = free_port()
    env = daemon_environment(production_url, sandbox_url, port)
    with open(log, "ab") as output, open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "propagator", "run", "--config", str(config)],
            env=env,
            stdin=stdin,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(process, port, log, timeout=120)
        load = Load(production_url, args.rows, args.clients, args.duration)
        cpu_started = cpu_seconds(process.pid)
        with Sampler(process.pid, production_url, sandbox_url) as sampler:
            started = time.monotonic()
            committed = load.run()
            load_ended = time.monotonic()
            target = table_sum(production_url, BUSY)
            while table_sum(sandbox_url, BUSY) != target:
                if process.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {process.returncode}:\n{tail(log)}")
                if time.monotonic() - load_ended > CONVERGE_DEADLINE:
                    raise RuntimeError(
                        f"the sandbox's {BUSY} did not converge within {CONVERGE_DEADLINE:.0f} s"
                    )
                time.sleep(0.02)
            converged = time.monotonic()
        if sampler.error is not None:
            raise RuntimeError(f"the sampler failed: {sampler.error!r}") from sampler.error
        cpu = cpu_seconds(process.pid) - cpu_started
        hwm = process_status(process.pid).get("VmHWM", 0)
        if target - before != committed:
            raise RuntimeError(
                f"{committed} updates committed but {BUSY} grew by {target - before}"
            )
    finally:
        if process.poll() is None:
            stop(process, log)
    elapsed = converged - started
    return Round(
        design=design,
        committed=committed,
        committed_per_second=committed / (load_ended - started),
        converged_per_second=committed / elapsed,
        drain_seconds=converged - load_ended,
        cpu_cores=cpu / elapsed,
        peaks=sampler.peaks,
        hwm_bytes=hwm,
        load_average=os.getloadavg()[0],
        cpu_seconds=cpu,
    )


def mib(value: float) -> float:
    return value / (1024 * 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of each table")
    parser.add_argument("--clients", type=int, default=4, help="threads updating the busy table")
    parser.add_argument("--duration", type=float, default=15, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    args = parser.parse_args()

    with (
        servers("production", "sandbox") as (production, sandbox),
        tempfile.TemporaryDirectory(prefix="propagator-bench-") as folder,
    ):
        production_url, sandbox_url = production.url(), sandbox.url()
        for url in (production_url, sandbox_url):
            create_tables(url, args.rows)
        configs = {"one": Path(folder) / "one.toml", "twenty": Path(folder) / "twenty.toml"}
        write_config(configs["one"], [BUSY])
        write_config(configs["twenty"], table_names())
        install_triggers(configs["twenty"], production_url, sandbox_url)
        machine = machine_description(production_url)
        print(
            f"{TABLES} tables of {args.rows:,} rows, {args.clients} clients updating {BUSY} for "
            f"{args.duration:g} s; {machine['nproc']} CPUs, PostgreSQL {machine['postgresql']}, "
            f"Python {machine['python']}; {args.repeat} rounds",
            flush=True,
        )
        rounds: dict[str, list[Round]] = {design: [] for design in DESIGNS}
        for number in range(1, args.repeat + 1):
            order = DESIGNS if number % 2 else tuple(reversed(DESIGNS))
            for design in order:
                log = Path(folder) / f"daemon-{design}-{number}.log"
                result = run_round(design, configs[design], production_url, sandbox_url, args, log)
                rounds[design].append(result)
                print(
                    f"  round {number}, {LABELS[design]:>11}: "
                    f"committed {result.committed_per_second:,.0f}/s, "
                    f"converged {result.converged_per_second:,.0f}/s, "
                    f"drain {result.drain_seconds:.2f} s, "
                    f"production connections {result.peaks.production} "
                    f"({describe(result.peaks.production_names_at_peak)}), "
                    f"sandbox {result.peaks.sandbox}, "
                    f"RSS {mib(result.peaks.rss_bytes):.1f} MiB "
                    f"(peak since start {mib(result.hwm_bytes):.1f}), "
                    f"CPU {result.cpu_cores:.2f} cores "
                    f"({result.cpu_ms_per_thousand:.0f} ms per 1,000 updates), "
                    f"load average {result.load_average:.1f}",
                    flush=True,
                )
    report(rounds)
    return 0


def describe(names: dict[str, int]) -> str:
    return ", ".join(f"{name} ×{count}" for name, count in sorted(names.items())) or "none"


def report(rounds: dict[str, list[Round]]) -> None:
    one, twenty = rounds["one"], rounds["twenty"]
    width = 40
    rows: list[tuple[str, Callable[[Round], float], str, bool]] = [
        ("updates committed per second (load)", lambda r: r.committed_per_second, ",.0f", True),
        ("updates converged per second", lambda r: r.converged_per_second, ",.0f", True),
        ("converged / committed (%)", lambda r: r.kept_up * 100, ".1f", True),
        ("drain after load end (s)", lambda r: r.drain_seconds, ".2f", True),
        ("daemon CPU (cores)", lambda r: r.cpu_cores, ".2f", True),
        ("daemon CPU per 1,000 updates (ms)", lambda r: r.cpu_ms_per_thousand, ".1f", True),
        ("machine load average (1 min) at the end", lambda r: r.load_average, ".1f", False),
        ("peak production connections", lambda r: r.peaks.production, ".0f", False),
        ("peak sandbox connections", lambda r: r.peaks.sandbox, ".0f", False),
        ("peak RSS during load (MiB)", lambda r: mib(r.peaks.rss_bytes), ".1f", True),
        ("peak RSS since start, VmHWM (MiB)", lambda r: mib(r.hwm_bytes), ".1f", True),
    ]
    print()
    print(
        f"{'median of ' + str(len(one)) + ' rounds':<{width}}{LABELS['one']:>12}"
        f"{LABELS['twenty']:>14}{'ratio':>8}   each round: {LABELS['one']} | {LABELS['twenty']}"
    )
    for label, pick, form, ratio in rows:
        firsts, seconds = [pick(r) for r in one], [pick(r) for r in twenty]
        first, second = statistics.median(firsts), statistics.median(seconds)
        shown = f"{second / first:.3f}" if ratio and first else ""
        print(
            f"{label:<{width}}{format(first, form):>12}{format(second, form):>14}{shown:>8}   "
            f"{', '.join(format(v, form) for v in firsts)} | "
            f"{', '.join(format(v, form) for v in seconds)}"
        )

    first = statistics.median(r.converged_per_second for r in one)
    second = statistics.median(r.converged_per_second for r in twenty)
    throughput_ratio = second / first
    ratios = [
        b.converged_per_second / a.converged_per_second for a, b in zip(one, twenty, strict=True)
    ]
    print(
        f"\nbusy mapping's throughput, {LABELS['twenty']} / {LABELS['one']}: "
        f"{throughput_ratio:.3f} (ratio of medians); same round: "
        f"{', '.join(f'{ratio:.3f}' for ratio in ratios)}"
    )
    for design in DESIGNS:
        for side in ("production", "sandbox"):
            names: Counter[str] = Counter()
            for r in rounds[design]:
                at_peak = getattr(r.peaks, f"{side}_names_at_peak")
                for name, count in at_peak.items():
                    names[name] = max(names[name], count)
            print(f"{side} connections at the peak, {LABELS[design]}: {describe(names)}")

    worst_connections = max(r.peaks.production for r in twenty)
    worst_rss = max(r.peaks.rss_bytes for r in twenty)
    worst_hwm = max(r.hwm_bytes for r in twenty)
    verdicts = [
        (
            f"production connections <= {CONNECTION_TARGET} per production database",
            worst_connections <= CONNECTION_TARGET,
            f"worst round {worst_connections}",
        ),
        (
            "daemon RSS <= 150 MB (143.1 MiB)",
            worst_rss <= RSS_TARGET_BYTES,
            f"worst round {mib(worst_rss):.1f} MiB during load, "
            f"{mib(worst_hwm):.1f} MiB peak since start",
        ),
        (
            f"busy mapping's throughput >= {THROUGHPUT_TARGET:.0%} of one mapping's",
            throughput_ratio >= THROUGHPUT_TARGET,
            f"{throughput_ratio:.1%} ({second:,.0f} against {first:,.0f} updates/s)",
        ),
    ]
    met = sum(ok for _, ok, _ in verdicts)
    print(f"\ntargets, {LABELS['twenty']} in one daemon: {met} of {len(verdicts)} met")
    for label, ok, detail in verdicts:
        print(f"  {'met    ' if ok else 'NOT met'}  {label}: {detail}")


if __name__ == "__main__":
    sys.exit(main())
