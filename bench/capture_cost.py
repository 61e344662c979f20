"""What each capture costs production writers: pgbench TPS with none, logical and notify.

    python bench/capture_cost.py --rounds 5 -T 20
    python bench/capture_cost.py --rounds 5 -T 20 --pin

Two embedded servers: production (``wal_level=logical``, ``max_slot_wal_keep_size``
bounded so the install needs no ``--allow-unbounded-slot``) and a sandbox, both
holding ``public.jobs`` of ``--rows`` rows. Every run is pgbench (``--clients``
clients, 1 by default) updating ``fab_order``, the mapped column, of one random row
per transaction for ``-T`` seconds, under one capture:

  none     no capture at all: no slot, no publication, no trigger, no daemon
  logical  publication and slot (``propagator capture install``, capture = logical)
           and the daemon streaming the slot into the sandbox
  notify   the triggers (``propagator capture install``, capture = notify: what
           ``propagator triggers install`` installs) and the daemon listening

each with ``synchronous_commit`` on and with it off for pgbench's sessions
(``PGOPTIONS``). Production runs with ``fsync`` and ``full_page_writes`` on, as a
production server does (``--fsync off``: the embedded default, where "on" waits for
a WAL write, not for a disk flush, and every figure is CPU-bound). A round runs every capture once,
each with both settings; the captures' order rotates from round to round and the
settings' order flips. Between captures the previous one is removed and checked
gone (no slot, publication or trigger left), so ``none`` has none. Before each run
the sandbox equals production (a reconcile before a daemon starts, then the daemon
converges each run before the next), both tables are vacuumed and production is
checkpointed; autovacuum is off on the table so no worker runs in one run and not in
another. ``none`` runs on the same server, so the cost of ``wal_level=logical``
itself (a little more WAL per UPDATE than ``replica``) is in every figure alike.

The daemon runs in this process (``propagator.testing.DaemonRunner``, as in
``event_path.py``), started afresh for each capture; "daemon CPU" is this process's
CPU during the load. "daemon's production backends" is the CPU of the production
backends the daemon holds (the walsender decoding the slot or the LISTEN
connection, and the reader), from ``/proc``: that one is spent on production's
server. "drain" is the time from pgbench's end until the sandbox equals production,
or, when rows are left stale, until it last changed. "Rows left stale" still differ
once the daemon holds no key and (logical) has let its slot go past the load: they
are listed, then reconciled so the next run starts equal. For logical, "slot behind"
is ``pg_current_wal_lsn() - confirmed_flush_lsn`` at load end and "slot let go" the
time after convergence until the slot's confirmed position passed the load's last
WAL (the slot advancing).

``--pin`` puts the sandbox server and this process (the daemon) on the last CPU and
production (its postmaster, so every backend, the walsender included) and pgbench
on the others: the daemon's own work then does not compete with production's
writers for CPU, which is not a cost of the capture to production.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_jobs, machine_description
from propagator.daemon import tune_garbage_collection
from propagator.demo.embedded import EmbeddedPostgres
from propagator.observability.logging import configure_logging
from propagator.services.reconcile import run_reconcile
from propagator.settings import Settings, load_settings
from propagator.testing import DaemonRunner

REPO = Path(__file__).resolve().parent.parent
CAPTURES = ("none", "logical", "notify")
SYNCS = ("on", "off")
SCRIPT = """\\set id random(1, {rows})
UPDATE jobs SET fab_order = fab_order + 1 WHERE id = :id;
"""
_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)

Connection = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Run:
    """One pgbench run under one capture and one ``synchronous_commit``."""

    tps: float
    daemon_cpu: float | None = None  # cores, during the load
    backend_cpu: float | None = None  # cores: the daemon's production backends
    drain: float | None = None  # seconds after the load until the sandbox equalled production
    slot_behind: int | None = None  # bytes of WAL the slot had not confirmed at load end
    slot_let_go: float | None = None  # seconds after convergence until confirmed past load end
    stale: list[int] = field(default_factory=list)  # ids the daemon never brought equal


@dataclass
class Bench:
    """The servers, the load script and how to run each piece on which CPUs."""

    production: EmbeddedPostgres
    sandbox: EmbeddedPostgres
    script: Path
    args: argparse.Namespace
    settings: dict[str, Settings]
    production_cpus: set[int] | None = None  # None: not pinned

    @property
    def production_url(self) -> str:
        return self.production.url()

    @property
    def sandbox_url(self) -> str:
        return self.sandbox.url()


# Pinning.


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process on ``cpus``; children and new threads inherit it."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


# Processes and their CPU.


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids`` so far (a process gone is left out)."""
    seconds: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def daemon_backends(conn: Connection) -> list[int]:
    """Production backends the daemon holds: walsender or listener, and the reader."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'propagator%'"
        " AND pid <> pg_backend_pid()"
    ).fetchall()
    return [int(row[0]) for row in rows]


def capture_command(production_url: str, sandbox_url: str, capture: str, *arguments: str) -> str:
    """``python -m propagator ARGUMENTS`` of this tree, configured as the daemon is."""
    env = dict(
        os.environ,
        PRODUCTION_DATABASE_URL=production_url,
        SANDBOX_DATABASE_URL=sandbox_url,
        PROPAGATOR_CAPTURE=capture,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, "-m", "propagator", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"`propagator {' '.join(arguments)}` (capture {capture}) exited "
            f"{result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def pgbench(bench: Bench, sync: str) -> float:
    """One pgbench run with ``synchronous_commit`` = ``sync``; its TPS."""
    args = bench.args
    command = [
        str(bench.production.bin / "pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(bench.production.port),
        "-U",
        "postgres",
        "-n",
        "-f",
        str(bench.script),
        "-c",
        str(args.clients),
        "-j",
        str(args.clients),
        "-T",
        str(args.duration),
        "postgres",
    ]
    if bench.production_cpus is not None:
        command = ["taskset", "-c", cpu_list(bench.production_cpus), *command]
    env = dict(os.environ, PGOPTIONS=f"-c synchronous_commit={sync}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    match = _TPS.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


# The servers' state (also used by event_path.py --capture logical).


def table_sum(conn: Connection) -> Any:
    row = conn.execute("SELECT sum(fab_order) FROM jobs").fetchone()
    return row[0] if row else None


def capture_left(conn: Connection) -> list[str]:
    """Whatever capture is still installed on production (empty: none)."""
    left = [f"slot {row[0]}" for row in conn.execute("SELECT slot_name FROM pg_replication_slots")]
    left += [f"publication {row[0]}" for row in conn.execute("SELECT pubname FROM pg_publication")]
    left += [
        f"trigger {row[0]}"
        for row in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.jobs'::regclass"
            " AND NOT tgisinternal"
        )
    ]
    return left


def slot_state(conn: Connection, slot: str) -> tuple[bool, int | None] | None:
    """(active, WAL bytes not confirmed yet) of ``slot``; None when there is none."""
    row = conn.execute(
        "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return None if row is None else (bool(row[0]), None if row[1] is None else int(row[1]))


def slot_active(conn: Connection, slot: str) -> bool:
    state = slot_state(conn, slot)
    return state is not None and state[0]


def current_lsn(conn: Connection) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def confirmed_past(conn: Connection, slot: str, lsn: str) -> bool:
    """Whether the daemon has let ``slot`` go to ``lsn`` or beyond."""
    row = conn.execute(
        "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
        (lsn, slot),
    ).fetchone()
    return bool(row and row[0])


def seconds_until(condition: Callable[[], bool], timeout: float) -> float | None:
    """Poll ``condition`` until it holds; the seconds it took, None at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - started


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Raise at the deadline."""
    waited = seconds_until(condition, timeout)
    if waited is None:
        raise RuntimeError(f"{what}: not within {timeout:g} s")
    return waited


def stale_ids(production: Connection, sandbox: Connection) -> list[int]:
    """Ids whose ``fab_order`` differs between the two servers."""
    query = "SELECT id, fab_order FROM jobs"
    wanted: dict[int, Any] = dict(production.execute(query).fetchall())
    held: dict[int, Any] = dict(sandbox.execute(query).fetchall())
    return sorted(key for key, value in wanted.items() if held.get(key) != value)


@dataclass
class Converged:
    """When the sandbox last changed on its way to production, and the rows it never got."""

    at: float  # time.monotonic()
    stale: list[int]


def wait_converged(
    production_url: str,
    sandbox_url: str,
    runner: DaemonRunner,
    settings: Settings,
    load_end_lsn: str,
    *,
    timeout: float = 180.0,
    settle: float = 5.0,
) -> Converged:
    """Wait until the sandbox equals production, at most ``timeout`` seconds.

    Rows can be left stale for good: the sandbox no longer changes (``settle``
    seconds), the daemon holds no key and, in logical mode, has let its slot go
    past the load's last WAL (``load_end_lsn``), yet rows still differ. Those are
    listed, then reconciled so the next run starts equal; ``at`` is then when
    the sandbox last changed.
    """
    logical = settings.capture == "logical"
    with (
        psycopg.connect(production_url, autocommit=True) as production,
        psycopg.connect(sandbox_url, autocommit=True) as sandbox,
    ):
        target = table_sum(production)
        started = changed = time.monotonic()
        held = table_sum(sandbox)
        while held != target:
            runner.check_alive()
            now = time.monotonic()
            if now - started > timeout:
                raise RuntimeError(f"the sandbox did not converge within {timeout:g} s")
            daemon = runner.daemon
            idle = len(daemon.buffer) == 0 and daemon.in_flight_keys == 0
            if (
                idle
                and now - changed > settle
                and (not logical or confirmed_past(production, settings.logical_slot, load_end_lsn))
            ):
                stale = stale_ids(production, sandbox)
                run_reconcile(settings, apply=True, source="reconcile")
                return Converged(changed, stale)
            time.sleep(0.02)
            now_held = table_sum(sandbox)
            if now_held != held:
                held, changed = now_held, time.monotonic()
        return Converged(changed, [])


def reset(bench: Bench) -> None:
    """Both tables vacuumed, production checkpointed: every run starts alike."""
    for url in (bench.production_url, bench.sandbox_url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM public.jobs")
    with psycopg.connect(bench.production_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


# One capture: installed, its daemon started, measured, stopped, removed.


@contextlib.contextmanager
def capture_running(bench: Bench, capture: str) -> Iterator[DaemonRunner | None]:
    with psycopg.connect(bench.production_url, autocommit=True) as conn:
        left = capture_left(conn)
    if left:
        raise RuntimeError(f"capture {capture} would start with {', '.join(left)} installed")
    if capture == "none":
        yield None
        return
    settings = bench.settings[capture]
    slot = settings.logical_slot
    capture_command(bench.production_url, bench.sandbox_url, capture, "capture", "install")
    try:
        # The sandbox equals production before the daemon starts (the logical
        # daemon has no catch-up: its slot was created just now, on an idle table).
        run_reconcile(settings, apply=True, source="reconcile")
        runner = DaemonRunner(settings)
        runner.start(timeout=30)
        try:
            runner.wait_caught_up(timeout=120)
            if capture == "logical":
                with psycopg.connect(bench.production_url, autocommit=True) as conn:
                    wait_for(lambda: slot_active(conn, slot), 30, "the daemon streaming the slot")
            yield runner
        finally:
            runner.stop()
        if capture == "logical":
            with psycopg.connect(bench.production_url, autocommit=True) as conn:
                wait_for(lambda: not slot_active(conn, slot), 30, "the slot released")
    finally:
        capture_command(bench.production_url, bench.sandbox_url, capture, "capture", "uninstall")


def measure(bench: Bench, capture: str, sync: str, runner: DaemonRunner | None) -> Run:
    reset(bench)
    settings = bench.settings["logical" if capture == "none" else capture]
    slot = settings.logical_slot
    with psycopg.connect(bench.production_url, autocommit=True) as conn:
        backends_before = cpu_seconds(daemon_backends(conn)) if runner is not None else {}
        cpu_before = time.process_time()
        started = time.monotonic()
        tps = pgbench(bench, sync)
        load_ended = time.monotonic()
        wall = load_ended - started
        run = Run(tps)
        if runner is None:
            return run
        run.daemon_cpu = (time.process_time() - cpu_before) / wall
        # A backend the daemon opened during the load counts from zero.
        backends_after = cpu_seconds(daemon_backends(conn))
        run.backend_cpu = (
            sum(after - backends_before.get(pid, 0.0) for pid, after in backends_after.items())
            / wall
        )
        load_end = current_lsn(conn)
        if capture == "logical":
            state = slot_state(conn, slot)
            run.slot_behind = None if state is None else state[1]
        converged = wait_converged(
            bench.production_url, bench.sandbox_url, runner, settings, load_end
        )
        run.drain = converged.at - load_ended
        run.stale = converged.stale
        if capture == "logical":
            run.slot_let_go = seconds_until(lambda: confirmed_past(conn, slot, load_end), 60)
            if run.slot_let_go is None:
                print(
                    f"  ! slot {slot} not confirmed past the load's end ({load_end}) "
                    "60 s after the sandbox converged",
                    flush=True,
                )
    return run


# The report.


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def median_of(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def report(
    args: argparse.Namespace,
    captures: Sequence[str],
    results: dict[tuple[str, str], list[Run]],
) -> None:
    print()
    print(
        "| capture | synchronous_commit | median TPS | vs none | same-round ratio to none "
        "| TPS each round |\n|---|---|---:|---:|---|---|"
    )
    for sync in args.sync:
        baseline = [run.tps for run in results[("none", sync)]]
        for capture in captures:
            runs = results[(capture, sync)]
            tps = [run.tps for run in runs]
            ratio = statistics.median(tps) / statistics.median(baseline)
            same_round = (
                ""
                if capture == "none"
                else ", ".join(f"{t / b:.2f}" for t, b in zip(tps, baseline, strict=True))
            )
            each = ", ".join(f"{t:,.0f}" for t in tps)
            print(
                f"| {capture} | {sync} | {statistics.median(tps):,.0f} | {ratio:.2f} "
                f"| {same_round} | {each} |"
            )
    print()
    print(
        "| capture | synchronous_commit | daemon CPU (cores) | daemon's production backends "
        "CPU (cores) | drain after load (s) | slot behind at load end (kB) "
        "| slot let go after converged (s) | rows left stale, all rounds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for sync in args.sync:
        for capture in captures:
            if capture == "none":
                continue
            runs = results[(capture, sync)]
            behind = median_of([r.slot_behind for r in runs])
            print(
                f"| {capture} | {sync} | {number(median_of([r.daemon_cpu for r in runs]), 2)} "
                f"| {number(median_of([r.backend_cpu for r in runs]), 2)} "
                f"| {number(median_of([r.drain for r in runs]), 2)} "
                f"| {number(None if behind is None else behind / 1024)} "
                f"| {number(median_of([r.slot_let_go for r in runs]), 2)} "
                f"| {sum(len(r.stale) for r in runs)} |"
            )
    print(
        "\nMedians of the rounds. vs none: median TPS / median TPS of none with the same "
        "synchronous_commit; same-round ratio: each round's TPS / that round's none."
    )
    if any(run.stale for runs in results.values() for run in runs):
        print(
            "Rows left stale: the daemon held no key (and, logical, had let its slot go past "
            "the load) while these rows still differed from production; each run's were "
            "listed above and reconciled before the next run."
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "-T", "--duration", type=int, default=10, help="seconds of each pgbench run"
    )
    parser.add_argument("--clients", type=int, default=1, help="pgbench clients")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; figures are medians")
    parser.add_argument(
        "--captures",
        default=",".join(CAPTURES),
        help=f"comma-separated subset of {','.join(CAPTURES)} (none is always run)",
    )
    parser.add_argument(
        "--sync",
        default=",".join(SYNCS),
        help="synchronous_commit settings of pgbench's sessions (comma-separated)",
    )
    parser.add_argument(
        "--max-slot-wal-keep-size",
        default="4GB",
        help="production's max_slot_wal_keep_size (-1 would need --allow-unbounded-slot)",
    )
    parser.add_argument(
        "--fsync",
        choices=("on", "off"),
        default="on",
        help="production's fsync and full_page_writes (on: as a production server runs)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="sandbox and daemon on the last CPU; production and pgbench on the others",
    )
    args = parser.parse_args()
    chosen = [c for c in args.captures.split(",") if c]
    unknown = sorted(set(chosen) - set(CAPTURES))
    args.sync = [s for s in args.sync.split(",") if s]
    if unknown or set(args.sync) - set(SYNCS) or not args.sync:
        parser.error(f"captures come from {CAPTURES}, sync from {SYNCS}")
    captures = [c for c in CAPTURES if c in chosen or c == "none"]
    configure_logging(
        log_level=os.environ.get("BENCH_LOG_LEVEL", "warning"), log_format="json", stream=sys.stderr
    )
    cpus = sorted(os.sched_getaffinity(0))
    production_cpus = daemon_cpus = None
    if args.pin:
        if len(cpus) < 2 or shutil.which("taskset") is None:
            parser.error("--pin needs at least 2 CPUs and taskset")
        production_cpus, daemon_cpus = set(cpus[:-1]), {cpus[-1]}

    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="propagator-bench-")))
        production = EmbeddedPostgres(
            "bench-capture-production",
            settings={
                "wal_level": "logical",
                "max_slot_wal_keep_size": args.max_slot_wal_keep_size,
                # A production server writes its WAL durably: "synchronous_commit on" then
                # waits for a real flush, as the writers this figure is about do.
                "fsync": args.fsync,
                "full_page_writes": args.fsync,
            },
        )
        sandbox = EmbeddedPostgres("bench-capture-sandbox")
        stack.callback(production.cleanup)
        stack.callback(sandbox.cleanup)
        # Pinned: the postmaster a server starts with keeps the CPUs of this process
        # at that moment, and every backend it forks inherits them.
        if production_cpus is not None:
            pin_this_process(production_cpus)
        production.start()
        if daemon_cpus is not None:
            pin_this_process(daemon_cpus)
        sandbox.start()
        script = folder / "update_fab_order.sql"
        script.write_text(SCRIPT.format(rows=args.rows))
        settings = {
            capture: load_settings(
                production_database_url=production.url(),
                sandbox_database_url=sandbox.url(),
                http_port=0,
                reconcile_interval="0",
                capture=capture,
            )
            for capture in ("logical", "notify")
        }
        bench = Bench(production, sandbox, script, args, settings, production_cpus)
        for url in (production.url(), sandbox.url()):
            load_jobs(url, args.rows)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ALTER TABLE public.jobs SET (autovacuum_enabled = off)")
        machine = machine_description(production.url())
        print(f"python bench/capture_cost.py {shlex.join(sys.argv[1:])}".rstrip())
        print(
            f"{args.rows:,} rows, {args.clients} pgbench client(s), single-row UPDATE of "
            f"fab_order, {args.rounds} rounds x {args.duration} s per run; "
            f"{machine['nproc']} CPUs, PostgreSQL {machine['postgresql']}, "
            f"Python {machine['python']}; production wal_level=logical, "
            f"max_slot_wal_keep_size={args.max_slot_wal_keep_size}"
        )
        if production_cpus is not None and daemon_cpus is not None:
            print(
                f"pinned: production (postmaster {postmaster_pid(production)} on CPUs "
                f"{cpu_list(os.sched_getaffinity(postmaster_pid(production)))}) and pgbench on "
                f"CPUs {cpu_list(production_cpus)}; sandbox (postmaster "
                f"{postmaster_pid(sandbox)} on CPUs "
                f"{cpu_list(os.sched_getaffinity(postmaster_pid(sandbox)))}) and the daemon "
                f"(this process) on CPU {cpu_list(daemon_cpus)}"
            )
        else:
            print("not pinned: every process may run on every CPU")

        results: dict[tuple[str, str], list[Run]] = {}
        for round_number in range(args.rounds):
            shift = round_number % len(captures)
            order = captures[shift:] + captures[:shift]
            syncs = args.sync[:: -1 if round_number % 2 else 1]
            for capture in order:
                with capture_running(bench, capture) as runner:
                    for sync in syncs:
                        run = measure(bench, capture, sync, runner)
                        results.setdefault((capture, sync), []).append(run)
                        extra = ""
                        if run.daemon_cpu is not None:
                            extra = (
                                f", daemon CPU {run.daemon_cpu:.2f}, its production backends "
                                f"{number(run.backend_cpu, 2)} cores, drain {run.drain:.2f} s"
                            )
                        if run.stale:
                            shown = ", ".join(str(i) for i in run.stale[:10])
                            extra += (
                                f", {len(run.stale)} rows left stale (ids {shown}"
                                f"{', ...' if len(run.stale) > 10 else ''}), reconciled"
                            )
                        if run.slot_behind is not None:
                            extra += (
                                f", slot behind {run.slot_behind / 1024:,.0f} kB at load end, "
                                f"let go {number(run.slot_let_go, 2)} s after converged"
                            )
                        print(
                            f"  round {round_number + 1} {capture:8} sync {sync:3} "
                            f"TPS {run.tps:,.0f}{extra}",
                            flush=True,
                        )
    report(args, captures, results)
    return 0


if __name__ == "__main__":
    # As ``propagator run`` does (see event_path.py): the daemon runs in this process.
    gc.freeze()
    tune_garbage_collection()
    sys.exit(main())
