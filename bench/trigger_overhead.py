"""What the change trigger costs production: pgbench TPS of single-row UPDATEs.

Two workloads (an UPDATE of a mapped column, an UPDATE of an unmapped column)
against the same table under several trigger designs, measured in the same run
so the figures are comparable on a noisy machine: runs are interleaved and each
figure is the median of ``--runs`` pgbench runs. A daemon-like listener drains
the notifications while pgbench runs.

TPS on a shared machine swings with everything else running, so two steadier
figures are printed too:
  cpu us   CPU time per transaction of the server backends, the listening
           backend and pgbench itself (what the transactions cost the machine,
           whatever else competes for it); needs the server on this machine
  exec us  the server's execution time of the same UPDATE under EXPLAIN
           ANALYZE, triggers included (median, designs interleaved)

    python bench/trigger_overhead.py --runs 5 --duration 5
    python bench/trigger_overhead.py --url postgresql://postgres@127.0.0.1:5432/postgres
    python bench/trigger_overhead.py --designs none,propagator,two_mappings

Designs:
  none          no trigger (the ceiling)
  row_constant  a bare row trigger calling pg_notify with a constant payload
                (the yardstick of the targets)
  previous      trigger version 2: a row trigger gated by WHEN (watched column
                IS DISTINCT FROM ...) collects keys, a statement trigger on every
                INSERT/UPDATE/DELETE sends them
  propagator    what `propagator triggers install` installs (version 3): UPDATE
                triggers only for statements naming a watched column, keys
                collected and sent in a few simple expressions
  two_mappings  the same, installed from a configuration in which two mappings
                read the table (fab_order into two sandboxes, into different
                columns): one trigger set per table, so it should cost what
                propagator costs; both are printed side by side with their ratio

Targets: on mapped UPDATEs, at most 5 percentage points (of the no-trigger TPS)
below row_constant; on unmapped UPDATEs, within 2 % of no trigger.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from propagator.demo.embedded import EmbeddedPostgres, binary_dir
from propagator.services import triggers
from propagator.settings import Settings, WatchedTable, load_settings, watched_tables
from propagator.settings.mappings import resolve_mappings

Connection = psycopg.Connection[tuple[Any, ...]]

TABLE = """
DROP TABLE IF EXISTS public.jobs CASCADE;
CREATE TABLE public.jobs (
    id bigserial PRIMARY KEY,
    job integer NOT NULL,
    release text NOT NULL,
    fab_order numeric(12, 2),
    paint_color text,
    stage text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job, release)
) WITH (autovacuum_enabled = off);
INSERT INTO public.jobs (job, release, fab_order, paint_color, stage)
SELECT g, 'R' || g, g, 'red', 'cut' FROM generate_series(1, %(rows)s) AS g;
"""
# Autovacuum is off so that no worker process ends during a run and adds its
# CPU time to the backends' (the runs VACUUM in between instead).

WORKLOADS = {
    "mapped": "UPDATE jobs SET fab_order = fab_order + 1 WHERE id = :id;",
    "unmapped": "UPDATE jobs SET paint_color = 'c' || :id WHERE id = :id;",
}

ROW_CONSTANT = """
CREATE FUNCTION bench_notify_constant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'changed'); RETURN NULL; END $$;
CREATE TRIGGER bench_row_constant AFTER UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION bench_notify_constant();
"""

PREVIOUS = """
CREATE FUNCTION bench_previous_collect() RETURNS trigger
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
    buffer_name text := 'bench.previous_buffer';
    buffered text := current_setting(buffer_name, true);
    previous text;
    new_key text;
    old_key text;
    chunks text;
BEGIN
    IF buffered = 'resync' THEN
        RETURN NULL;  -- this statement already asks for a full reconcile
    END IF;
    IF TG_OP <> 'DELETE' THEN
        IF NOT (NEW."job" IS NULL OR NEW."release" IS NULL) THEN
            new_key := (jsonb_build_array(NEW."job", NEW."release"))::text;
        END IF;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        IF NOT (OLD."job" IS NULL OR OLD."release" IS NULL) THEN
            old_key := (jsonb_build_array(OLD."job", OLD."release"))::text;
        END IF;
        IF old_key = new_key THEN
            old_key := NULL;  -- the key did not change: send it once
        END IF;
    END IF;
    previous := nullif(buffered, '');
    buffered := concat_ws(',', previous, new_key, old_key);
    IF octet_length(buffered) > 7900 THEN
        IF octet_length(concat_ws(',', new_key, old_key)) > 7900 THEN
            buffered := 'resync';  -- a key too long for any payload: resync instead
        ELSIF previous IS NOT NULL THEN
            chunks := nullif(current_setting('bench.previous_chunks', true), '');
            IF array_length(string_to_array(chunks, E'\n'), 1) >= 25 - 1 THEN
                buffered := 'resync';  -- too many keys to list
                chunks := NULL;
            ELSE
                chunks := concat_ws(E'\n', chunks, previous);
                buffered := concat_ws(',', new_key, old_key);
            END IF;
            PERFORM set_config('bench.previous_chunks', coalesce(chunks, ''), true);
        END IF;
    END IF;
    PERFORM set_config(buffer_name, buffered, true);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'propagator: collecting a changed key failed (% %), requesting a resync',
        SQLSTATE, SQLERRM;
    PERFORM set_config('bench.previous_buffer', 'resync', true);
    RETURN NULL;
END
$$;


CREATE FUNCTION bench_previous_send() RETURNS trigger
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
    buffered text := current_setting('bench.previous_buffer', true);
    chunks text;
    stamp text;
    chunk text;
BEGIN
    IF buffered IS NULL OR buffered = '' THEN
        RETURN NULL;  -- no watched column changed in this statement
    END IF;
    BEGIN
        chunks := current_setting('bench.previous_chunks', true);
        PERFORM set_config('bench.previous_buffer', '', true);
        IF chunks <> '' THEN
            PERFORM set_config('bench.previous_chunks', '', true);
        END IF;
        stamp := extract(epoch FROM clock_timestamp())::text;
        IF pg_notification_queue_usage() >= 0.9 THEN
            RAISE WARNING 'propagator: NOTIFY queue is % full, change on % not announced',
                round((pg_notification_queue_usage() * 100)::numeric, 1) || '%', TG_TABLE_NAME;
            RETURN NULL;
        END IF;
        IF buffered = 'resync' THEN
            PERFORM pg_notify('propagator_jobs', '{"v":1,"t":' || stamp || ',"resync":true}');
            RETURN NULL;
        END IF;
        IF chunks <> '' THEN
            FOREACH chunk IN ARRAY string_to_array(chunks, E'\n') LOOP
                PERFORM pg_notify('propagator_jobs',
                    '{"v":1,"t":' || stamp || ',"k":[' || chunk || ']}');
            END LOOP;
        END IF;
        PERFORM pg_notify('propagator_jobs',
            '{"v":1,"t":' || stamp || ',"k":[' || buffered || ']}');
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'propagator: change notification failed (% %), requesting a resync',
            SQLSTATE, SQLERRM;
        BEGIN
            PERFORM set_config('bench.previous_buffer', '', true);
            PERFORM set_config('bench.previous_chunks', '', true);
            PERFORM pg_notify('propagator_jobs',
                '{"v":1,"t":' || extract(epoch FROM clock_timestamp()) || ',"resync":true}');
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'propagator: resync request failed too (% %)', SQLSTATE, SQLERRM;
        END;
    END;
    RETURN NULL;
END
$$;

CREATE TRIGGER bench_previous_update AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.job IS DISTINCT FROM NEW.job OR OLD.release IS DISTINCT FROM NEW.release
          OR OLD.fab_order IS DISTINCT FROM NEW.fab_order)
    EXECUTE FUNCTION bench_previous_collect();
CREATE TRIGGER bench_previous_send AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bench_previous_send();
"""

RESET = """
DROP TRIGGER IF EXISTS bench_row_constant ON jobs;
DROP FUNCTION IF EXISTS bench_notify_constant();
DROP TRIGGER IF EXISTS bench_previous_update ON jobs;
DROP TRIGGER IF EXISTS bench_previous_send ON jobs;
DROP FUNCTION IF EXISTS bench_previous_collect();
DROP FUNCTION IF EXISTS bench_previous_send();
"""

DESIGNS = ("none", "row_constant", "previous", "propagator", "two_mappings")
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_PROCESSED = re.compile(r"number of transactions actually processed: ([0-9]+)")
_BENCH_DATABASE = "propagator_bench_triggers"


@dataclass(frozen=True, slots=True)
class Run:
    """One pgbench run: its TPS and, when measurable, CPU microseconds per transaction."""

    tps: float
    cpu_us: float | None


class CpuMeter:
    """CPU time spent on the benchmark's transactions, read from /proc.

    Backends are children of the postmaster: once pgbench disconnects and the
    postmaster has reaped them, their CPU time appears in its cutime/cstime.
    The listening backend lives on, so its own counter is read; pgbench's comes
    from this process's children. Unavailable (None) for a remote server.
    """

    def __init__(self, conn: Connection, listener_pid: int) -> None:
        self.listener_pid = listener_pid
        self.postmaster_pid: int | None = None
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        ).fetchone()
        if row is None:
            return
        with contextlib.suppress(OSError, IndexError, ValueError):
            postmaster = int(_proc_stat(int(row[0]))[1])  # the parent of the checkpointer
            _proc_stat(postmaster)
            _schedstat_seconds(listener_pid)
            self.postmaster_pid = postmaster

    @property
    def available(self) -> bool:
        return self.postmaster_pid is not None

    def sample(self) -> float:
        assert self.postmaster_pid is not None
        fields = _proc_stat(self.postmaster_pid)
        children = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return children + _schedstat_seconds(self.listener_pid) + usage.ru_utime + usage.ru_stime


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _schedstat_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[0]) / 1e9


@contextlib.contextmanager
def draining(conn: Connection) -> Iterator[None]:
    """Consume notifications in a thread while the block runs, as the daemon would."""
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.2):
                pass

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def bench_server(url: str | None) -> Iterator[str]:
    """A database to benchmark in: a throwaway embedded server, or a fresh one on ``url``."""
    if url is None:
        with EmbeddedPostgres("bench-triggers") as server:
            yield server.url()
        return
    parts = urlsplit(url)
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_BENCH_DATABASE))
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(_BENCH_DATABASE)
    )
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(create)
    try:
        yield parts._replace(path="/" + _BENCH_DATABASE).geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(drop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="pgbench runs per figure (median)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--samples", type=int, default=600, help="EXPLAIN ANALYZE statements per design"
    )
    parser.add_argument(
        "--designs", default=",".join(DESIGNS), help=f"comma-separated subset of {DESIGNS}"
    )
    parser.add_argument("--url", help="an existing server to use instead of an embedded one")
    args = parser.parse_args()
    chosen = [d for d in args.designs.split(",") if d]
    unknown = sorted(set(chosen) - set(DESIGNS))
    if unknown or "none" not in chosen:
        parser.error(f"designs must include none and come from {DESIGNS}; got {unknown}")

    with bench_server(args.url) as url:
        settings = load_settings(None, production_database_url=url)
        designs = {name: _design(name, settings) for name in chosen}
        with (
            psycopg.connect(url, autocommit=True) as conn,
            psycopg.connect(url, autocommit=True) as listener,
        ):
            version = conn.execute("SHOW server_version").fetchone()
            conn.execute(TABLE.encode().replace(b"%(rows)s", str(args.rows).encode()))
            # Somebody LISTENs, as in production, so notifications are really queued.
            listener.execute("LISTEN propagator_jobs")
            meter = CpuMeter(conn, listener.info.backend_pid)
            scripts = _write_scripts(args.rows)
            results: dict[tuple[str, str], list[Run]] = {}
            for run in range(args.runs):
                # Every other run backwards, so a drift in the machine's load during
                # the run falls on early and late designs alike.
                order = list(designs.items())[:: -1 if run % 2 else 1]
                for name, apply in order:
                    apply(conn)
                    for workload, script in scripts.items():
                        conn.execute("VACUUM jobs")
                        measured = _pgbench(url, script, args, conn, listener, meter)
                        if measured is None:
                            return 1
                        results.setdefault((workload, name), []).append(measured)
                        cpu = f"{measured.cpu_us:8.1f} cpu us" if measured.cpu_us else ""
                        print(
                            f"run {run + 1} {workload:8} {name:12} {measured.tps:10.0f} tps {cpu}",
                            flush=True,
                        )
            # Server-side times, designs interleaved in short rounds so that load
            # from anything else on the machine falls on every design alike.
            samples: dict[tuple[str, str], list[float]] = {}
            rounds = 10
            for _ in range(rounds):
                for name, apply in designs.items():
                    apply(conn)
                    for workload, statement in WORKLOADS.items():
                        samples.setdefault((workload, name), []).extend(
                            _execution_times(conn, statement, args.rows, args.samples // rounds)
                        )
                    for _ in listener.notifies(timeout=0.01):
                        pass
            timings = {key: statistics.median(values) for key, values in samples.items()}
            apply_none = designs["none"]
            apply_none(conn)
        server = version[0] if version else "?"
        _report(results, timings, args, server)
        if "propagator" in designs and "two_mappings" in designs:
            shared = two_mappings(settings)
            same_sql = triggers.render_install_sql(shared) == triggers.render_install_sql(settings)
            _report_two_mappings(results, timings, same_sql)
    return 0


def two_mappings(settings: Settings) -> WatchedTable:
    """``public.jobs`` read by two mappings: fab_order into two sandboxes, different columns."""
    qa_sandbox = urlsplit(settings.production_url())._replace(path="/qa_sandbox").geturl()
    configuration = resolve_mappings(
        settings,
        [
            {"name": "jobs", "field_mappings": ["fab_order"]},
            {
                "name": "jobs_qa",
                "sandbox_database_url": qa_sandbox,
                "field_mappings": ["fab_order->planned_order"],
            },
        ],
    )
    (table,) = watched_tables(configuration.mappings)
    return table


def _design(name: str, settings: Settings) -> Callable[[Connection], None]:
    shared = two_mappings(settings)

    def apply(conn: Connection) -> None:
        conn.execute(RESET)
        triggers.uninstall(conn, settings)
        if name == "propagator":
            triggers.install(conn, settings)
        elif name == "two_mappings":
            triggers.install(conn, shared)
        elif name == "row_constant":
            conn.execute(ROW_CONSTANT.encode())
        elif name == "previous":
            conn.execute(PREVIOUS.encode())

    return apply


def _pgbench(
    url: str,
    script: Path,
    args: argparse.Namespace,
    conn: Connection,
    listener: Connection,
    meter: CpuMeter,
) -> Run | None:
    parts = urlsplit(url)
    command = [
        str(binary_dir() / "pgbench"),
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        "-n",
        "-c",
        str(args.clients),
        "-j",
        str(args.clients),
        "-T",
        str(args.duration),
        "-f",
        str(script),
        parts.path.lstrip("/") or "postgres",
    ]
    for _ in listener.notifies(timeout=0.01):
        pass  # drain so the queue never fills
    before = meter.sample() if meter.available else 0.0
    with draining(listener):
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        # The backends' CPU time reaches the postmaster once it has reaped them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"
        ).fetchone() != (0,):
            time.sleep(0.02)
        time.sleep(0.1)
    tps, processed = _TPS.search(completed.stdout), _PROCESSED.search(completed.stdout)
    if completed.returncode != 0 or tps is None or processed is None:
        print(f"pgbench failed:\n{completed.stdout}\n{completed.stderr}", file=sys.stderr)
        return None
    cpu = None
    if meter.available and int(processed.group(1)):
        cpu = (meter.sample() - before) / int(processed.group(1)) * 1e6
    return Run(float(tps.group(1)), cpu)


def _write_scripts(rows: int) -> dict[str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="propagator-bench-"))
    scripts = {}
    for workload, statement in WORKLOADS.items():
        path = folder / f"{workload}.sql"
        path.write_text(f"\\set id random(1, {rows})\n{statement}\n")
        scripts[workload] = path
    return scripts


def _execution_times(conn: Connection, statement: str, rows: int, samples: int) -> list[float]:
    """Server-side microseconds of single UPDATEs, triggers included (after 5 warm-up runs)."""
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace(":id", "%(id)s")
    times = []
    for sample in range(samples + 5):
        row = conn.execute(explain.encode(), {"id": sample * 7919 % rows + 1}).fetchone()
        assert row is not None
        plan: Any = row[0]
        times.append(float(plan[0]["Execution Time"]) * 1000)
    return times[5:]


def _report(
    results: dict[tuple[str, str], list[Run]],
    timings: dict[tuple[str, str], float],
    args: argparse.Namespace,
    server: str,
) -> None:
    print()
    print(
        f"single-row UPDATE TPS, median of {args.runs} x {args.duration}s pgbench runs, "
        f"{args.clients} clients, {args.rows:,} rows, PostgreSQL {server}"
    )
    print(
        f"{'workload':10}{'design':14}{'median tps':>11}{'vs none':>9}{'vs row_c':>10}"
        f"{'cpu us':>9}{'exec us':>9}   runs"
    )
    for workload in WORKLOADS:
        baseline = statistics.median(r.tps for r in results[(workload, "none")])
        yardstick = results.get((workload, "row_constant"))
        reference = statistics.median(r.tps for r in yardstick) if yardstick else None
        for (kind, name), runs in results.items():
            if kind != workload:
                continue
            median = statistics.median(r.tps for r in runs)
            change = (median / baseline - 1) * 100
            # Percentage points of the no-trigger TPS, as the target is stated.
            versus = f"{(median - reference) / baseline * 100:+9.1f}p" if reference else " " * 10
            cpus = [r.cpu_us for r in runs if r.cpu_us is not None]
            cpu = f"{statistics.median(cpus):9.1f}" if cpus else f"{'-':>9}"
            listed = ", ".join(f"{r.tps:.0f}" for r in runs)
            print(
                f"{workload:10}{name:14}{median:11.0f}{change:+8.1f}%{versus}{cpu}"
                f"{timings[(workload, name)]:9.1f}   {listed}"
            )
    print(
        "vs row_c: percentage points of the no-trigger TPS above (+) or below (-) row_constant\n"
        "cpu us: CPU time per transaction of backends, listener and pgbench (median of runs)\n"
        f"exec us: median server execution time of one UPDATE, triggers included "
        f"({args.samples} EXPLAIN ANALYZE per figure, designs interleaved)"
    )


def _report_two_mappings(
    results: dict[tuple[str, str], list[Run]],
    timings: dict[tuple[str, str], float],
    same_sql: bool,
) -> None:
    """One mapping against two mappings of the same table, side by side: they should match."""
    print()
    print(
        "one table read by two mappings (two_mappings) against one mapping (propagator), same run"
    )
    print(f"install SQL of the two identical: {'yes' if same_sql else 'NO'}")
    print(
        f"{'workload':10}{'one tps':>10}{'two tps':>10}{'ratio':>7}"
        f"{'one cpu':>9}{'two cpu':>9}{'one exec':>10}{'two exec':>10}"
    )
    for workload in WORKLOADS:
        one, two = results[(workload, "propagator")], results[(workload, "two_mappings")]
        one_tps = statistics.median(r.tps for r in one)
        two_tps = statistics.median(r.tps for r in two)
        cpus = []
        for runs in (one, two):
            measured = [r.cpu_us for r in runs if r.cpu_us is not None]
            cpus.append(f"{statistics.median(measured):9.1f}" if measured else f"{'-':>9}")
        print(
            f"{workload:10}{one_tps:10.0f}{two_tps:10.0f}{two_tps / one_tps:7.2f}"
            f"{cpus[0]}{cpus[1]}{timings[(workload, 'propagator')]:10.1f}"
            f"{timings[(workload, 'two_mappings')]:10.1f}"
        )
    print("ratio: two-mapping TPS / one-mapping TPS (medians); cpu us and exec us as above")


if __name__ == "__main__":
    sys.exit(main())
