"""Benchmark the event path: production UPDATEs -> trigger -> daemon -> sandbox.

    python bench/event_path.py --rows 100000 --duration 20 --clients 4 --repeat 3

Two embedded servers; ``public.jobs`` loaded identically on both. Each
repetition runs the same pgbench script (``fab_order = fab_order + 1`` on a
random row, unthrottled unless ``--rate``) three times, back to back, so every
figure has a baseline from the same minute of this noisy machine:

  baseline   no trigger, no daemon          (production's ceiling)
  triggers   the propagator trigger only    (what the trigger costs production)
  daemon     trigger + the daemon           (default settings, history included)

The daemon runs in this process (its CPU is this process's CPU) and is started
afresh for each daemon run; its catch-up converges what the runs without it
changed before the measured load starts. Figures are medians over the
repetitions.

Lag, measured two ways:

* probe (per change, the honest one): a separate connection updates a
  dedicated production row (never touched by pgbench) every ``--probe-interval``
  seconds with an increasing value and notes the wall-clock time its COMMIT
  returned. On the sandbox a deferred constraint trigger on that row stamps
  ``clock_timestamp()`` when the daemon's transaction commits. A probe value's
  lag is the time until the sandbox committed it or any later value (the
  buffer coalesces). Both clocks are this machine's.
* per batch (the daemon's ``propagator_propagation_lag_seconds``): production
  change time in the payload (statement end, shortly before commit) of the
  oldest change in a batch, to the sandbox commit. One sample per batch, so a
  large slow batch weighs as much as a small quick one.

"Backlog at load end" is what the daemon still held (buffer plus the batch in
flight) when pgbench stopped; "drain" the time until the sandbox equalled
production afterwards.

``--capture logical`` measures the same path from a pgoutput slot: production
starts with ``wal_level=logical`` (and a bounded ``max_slot_wal_keep_size``), the
publication and slot (``propagator capture install``) stand where the trigger
stands (the lines keep their names so both modes compare line by line: "trigger
only" is then the slot with nobody reading it), and the daemon runs with
``capture = "logical"``. A slot has no catch-up: before each daemon run a
reconcile brings the sandbox up to production (what the run without any capture
changed) and the daemon then streams what the slot kept of the capture-only run
before the load starts. Rows the daemon leaves stale for good (it holds no key,
the slot is let go past the load, and rows still differ) are reported on stderr
and reconciled, so the run's figures stand for the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capture_cost import (
    capture_command,
    confirmed_past,
    current_lsn,
    slot_active,
    wait_converged,
)
from bench.common import load_jobs, machine_description, servers
from propagator.daemon import tune_garbage_collection
from propagator.demo.embedded import EmbeddedPostgres
from propagator.observability.logging import configure_logging
from propagator.services import triggers
from propagator.services.reconcile import run_reconcile
from propagator.settings import Settings, load_settings
from propagator.settings.webhooks import WebhookSettings
from propagator.testing import DaemonRunner

SCRIPT = """\\set id random(1, {rows})
UPDATE jobs SET fab_order = fab_order + 1 WHERE id = :id;
"""

PROBE_JOB = 2_000_000_000  # a key pgbench's ids never reach

# Production's settings with --capture logical (notify keeps the embedded defaults).
LOGICAL_PRODUCTION = {"wal_level": "logical", "max_slot_wal_keep_size": "4GB"}

# The sandbox notes when each probe value commits (deferred: fires at COMMIT).
PROBE_SANDBOX_SQL = """
CREATE TABLE bench_probe_seen (value numeric NOT NULL, seen_at double precision NOT NULL);
CREATE FUNCTION bench_probe_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_probe_seen VALUES (NEW.fab_order, extract(epoch FROM clock_timestamp()));
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_probe_seen AFTER UPDATE OF fab_order ON jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.job = {job}) EXECUTE FUNCTION bench_probe_seen();
"""


def pgbench(
    server: EmbeddedPostgres, script: Path, clients: int, seconds: int, rate: int = 0
) -> float:
    """Run the custom script (throttled to ``rate`` TPS when given); return pgbench's TPS."""
    options = ["-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2))]
    if rate:
        options += ["-R", str(rate)]
    result = server.pgbench(*options, "-T", str(seconds))
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no TPS:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def table_sum(url: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT sum(fab_order) FROM jobs").fetchone()
        return row[0] if row else None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def keep_batch_lags(runner: DaemonRunner) -> list[float]:
    """Every batch lag the daemon observes from now on, appended to the returned list."""
    lags: list[float] = []
    metrics = runner.daemon.runtimes[0].metrics  # the one mapping's metrics
    observe = metrics.observe_lag

    def keep(change_epoch_seconds: float, now: float | None = None) -> float:
        lag = observe(change_epoch_seconds, now)
        lags.append(lag)
        return lag

    metrics.observe_lag = keep  # type: ignore[method-assign]
    return lags


class Probe:
    """Updates the probe row every ``interval`` seconds; keeps (value, commit time)."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.commits: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._value = 0

    def start(self, first_value: int) -> None:
        self._value = first_value
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                self._value += 1
                conn.execute(
                    "UPDATE jobs SET fab_order = %s WHERE job = %s", (self._value, PROBE_JOB)
                )
                self.commits.append((self._value, time.time()))


def probe_lags(commits: list[tuple[int, float]], seen: list[tuple[int, float]]) -> list[float]:
    """Per probe value: sandbox commit of it or any later value, minus its own commit."""
    lags: list[float] = []
    ordered = sorted(seen)
    earliest_from: list[float] = []  # earliest sandbox time among values >= ordered[i]
    running = float("inf")
    for _, seen_at in reversed(ordered):
        running = min(running, seen_at)
        earliest_from.append(running)
    earliest_from.reverse()
    values = [value for value, _ in ordered]
    index = 0
    for value, committed in sorted(commits):
        while index < len(values) and values[index] < value:
            index += 1
        if index == len(values):
            continue  # never reached the sandbox: counted as missing by the caller
        lags.append(max(0.0, earliest_from[index] - committed))
    return lags


@dataclass
class DaemonRun:
    tps: float
    converged_per_second: float
    rows_per_second: float
    notifications_per_second: float
    batches: int
    keys_per_batch: float
    backlog_at_end: int
    drain_seconds: float
    cpu_seconds_per_second: float
    probe_lags: list[float] = field(default_factory=list)
    probes_missing: int = 0
    batch_lags: list[float] = field(default_factory=list)


def daemon_run(
    settings: Settings,
    production: EmbeddedPostgres,
    sandbox_url: str,
    script: Path,
    args: argparse.Namespace,
    probe_value: int,
    *,
    webhooks: Sequence[WebhookSettings] = (),
    before_stop: Callable[[DaemonRunner], None] | None = None,
) -> DaemonRun:
    """One daemon run under load; ``before_stop`` sees the runner once the sandbox converged."""
    production_url = production.url()
    logical = settings.capture == "logical"
    if logical:
        # The slot kept only what the capture-only run changed: a reconcile stands for
        # the catch-up, the rest is streamed below before the load starts.
        run_reconcile(settings, apply=True, source="reconcile")
        with psycopg.connect(production_url, autocommit=True) as conn:
            kept_until = current_lsn(conn)
    running = DaemonRunner(settings, webhooks=webhooks)
    batch_lag_log = keep_batch_lags(running)
    running.start(timeout=30)
    # The catch-up converges what the runs without the daemon changed.
    running.wait_caught_up(timeout=120)
    if logical:
        wait_slot(running, production_url, settings.logical_slot, kept_until)
    daemon = running.daemon
    with psycopg.connect(sandbox_url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_probe_seen")
    rows_before = running.metric("propagator_rows_applied_total", source="event")
    batches_before = running.metric("propagator_batches_applied_total", source="event")
    received_before = running.metric("propagator_notifications_received_total")
    lags_before = len(batch_lag_log)
    probe = Probe(production_url, args.probe_interval)
    cpu_started = time.process_time()
    started = time.monotonic()
    probe.start(probe_value)
    try:
        tps = pgbench(production, script, args.clients, args.duration, args.rate)
    finally:
        probe.stop()
    load_ended = time.monotonic()
    backlog = len(daemon.buffer) + daemon.in_flight_keys
    if logical:
        converged = converge_logical(running, settings, production_url, sandbox_url)
    else:
        target = table_sum(production_url)
        while table_sum(sandbox_url) != target:
            if time.monotonic() - load_ended > 180:
                raise RuntimeError("the sandbox did not converge within 180 s")
            time.sleep(0.02)
        converged = time.monotonic()
    cpu = time.process_time() - cpu_started
    rows = running.metric("propagator_rows_applied_total", source="event") - rows_before
    batches = running.metric("propagator_batches_applied_total", source="event") - batches_before
    received = running.metric("propagator_notifications_received_total") - received_before
    batch_lags = batch_lag_log[lags_before:]
    if before_stop is not None:
        before_stop(running)
    running.stop()
    with psycopg.connect(sandbox_url) as conn:
        seen = [(int(v), float(t)) for v, t in conn.execute("SELECT * FROM bench_probe_seen")]
    lags = probe_lags(probe.commits, seen)
    elapsed = converged - started
    return DaemonRun(
        tps=tps,
        converged_per_second=tps * args.duration / elapsed,
        rows_per_second=rows / elapsed,
        notifications_per_second=received / args.duration,
        batches=int(batches),
        keys_per_batch=rows / batches if batches else 0.0,
        backlog_at_end=backlog,
        drain_seconds=converged - load_ended,
        cpu_seconds_per_second=cpu / elapsed,
        probe_lags=lags,
        probes_missing=len(probe.commits) - len(lags),
        batch_lags=batch_lags,
    )


def wait_slot(running: DaemonRunner, production_url: str, slot: str, lsn: str) -> None:
    """Until the daemon streams ``slot`` and has let it go to ``lsn`` (what it kept)."""
    deadline = time.monotonic() + 180
    with psycopg.connect(production_url, autocommit=True) as conn:
        while not slot_active(conn, slot) or not confirmed_past(conn, slot, lsn):
            running.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not stream slot {slot} to {lsn} within 180 s")
            time.sleep(0.02)


def converge_logical(
    running: DaemonRunner, settings: Settings, production_url: str, sandbox_url: str
) -> float:
    """When the sandbox equalled production (monotonic); rows left stale go to stderr."""
    with psycopg.connect(production_url, autocommit=True) as conn:
        load_end = current_lsn(conn)
    converged = wait_converged(production_url, sandbox_url, running, settings, load_end)
    if converged.stale:
        shown = ", ".join(str(i) for i in converged.stale[:20])
        more = ", ..." if len(converged.stale) > 20 else ""
        print(
            f"event_path: {len(converged.stale)} rows left stale after the daemon let its slot "
            f"go past the load (ids {shown}{more}); reconciled",
            file=sys.stderr,
            flush=True,
        )
    return converged.at


def install_capture(settings: Settings, production_url: str, sandbox_url: str) -> None:
    if settings.capture == "logical":
        capture_command(production_url, sandbox_url, "logical", "capture", "install")
        return
    with psycopg.connect(production_url, autocommit=True) as conn:
        triggers.install(conn, settings)


def uninstall_capture(settings: Settings, production_url: str, sandbox_url: str) -> None:
    if settings.capture == "logical":
        with psycopg.connect(production_url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while slot_active(conn, settings.logical_slot) and time.monotonic() < deadline:
                time.sleep(0.02)  # the stopped daemon's walsender is on its way out
        capture_command(production_url, sandbox_url, "logical", "capture", "uninstall")
        return
    with psycopg.connect(production_url, autocommit=True) as conn:
        triggers.uninstall(conn, settings)


@contextlib.contextmanager
def bench_servers(capture: str) -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    """Production and sandbox: ``bench.common.servers``, production for logical decoding."""
    if capture == "notify":
        with servers("production", "sandbox") as (production, sandbox):
            yield production, sandbox
        return
    started: list[EmbeddedPostgres] = []
    try:
        started.append(EmbeddedPostgres("bench-production", settings=LOGICAL_PRODUCTION).start())
        started.append(EmbeddedPostgres("bench-sandbox").start())
        yield started[0], started[1]
    finally:
        for server in started:
            server.cleanup()


def prepare(
    production_url: str, sandbox_url: str, rows: int, folder: Path, capture: str = "notify"
) -> tuple[Path, Settings]:
    """``jobs`` (plus the probe row) on both servers, the probe's sandbox trigger, the
    pgbench script in ``folder`` and the daemon's settings (defaults, no periodic reconcile)."""
    for url in (production_url, sandbox_url):
        load_jobs(url, rows)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobs (id, job, release, fab_order) VALUES (%s, %s, 'P', 0)",
                (rows + 1, PROBE_JOB),
            )
    with psycopg.connect(sandbox_url, autocommit=True) as conn:
        conn.execute(PROBE_SANDBOX_SQL.format(job=PROBE_JOB).encode())
    script = folder / "update_fab_order.sql"
    script.write_text(SCRIPT.format(rows=rows))
    settings = load_settings(
        production_database_url=production_url,
        sandbox_database_url=sandbox_url,
        http_port=0,
        reconcile_interval="0",
        capture=capture,
    )
    return script, settings


def median_of(runs: list[DaemonRun], pick: Callable[[DaemonRun], float]) -> float:
    return statistics.median(pick(run) for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=20, help="seconds of each daemon run")
    parser.add_argument("--baseline-duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; figures are medians")
    parser.add_argument("--probe-interval", type=float, default=0.02, help="seconds")
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="throttle the daemon runs to this many TPS (0: as fast as production goes)",
    )
    parser.add_argument(
        "--capture",
        choices=("notify", "logical"),
        default="notify",
        help="triggers and NOTIFY (default), or a pgoutput slot (production wal_level=logical)",
    )
    args = parser.parse_args()
    configure_logging(
        log_level=os.environ.get("BENCH_LOG_LEVEL", "warning"), log_format="json", stream=sys.stderr
    )

    with (
        bench_servers(args.capture) as (production, sandbox),
        tempfile.TemporaryDirectory(prefix="propagator-bench-") as folder,
    ):
        production_url, sandbox_url = production.url(), sandbox.url()
        script, settings = prepare(
            production_url, sandbox_url, args.rows, Path(folder), args.capture
        )
        machine = machine_description(production_url)
        throttle = f", daemon runs throttled to {args.rate:,} TPS" if args.rate else ""
        capture = (
            "; capture logical (wal_level=logical; trigger below: the publication and slot)"
            if args.capture == "logical"
            else ""
        )
        print(
            f"rows {args.rows:,}, {args.clients} pgbench clients{throttle}, both servers local; "
            f"{machine['nproc']} CPUs, PostgreSQL {machine['postgresql']}, "
            f"Python {machine['python']}; {args.repeat} repetitions{capture}"
        )
        baselines: list[float] = []
        with_triggers: list[float] = []
        runs: list[DaemonRun] = []
        probe_value = 0
        for repetition in range(1, args.repeat + 1):
            uninstall_capture(settings, production_url, sandbox_url)
            baselines.append(pgbench(production, script, args.clients, args.baseline_duration))
            install_capture(settings, production_url, sandbox_url)
            with_triggers.append(pgbench(production, script, args.clients, args.baseline_duration))
            run = daemon_run(settings, production, sandbox_url, script, args, probe_value)
            probe_value += 1_000_000
            runs.append(run)
            print(
                f"  run {repetition}: TPS {baselines[-1]:,.0f} / {with_triggers[-1]:,.0f} / "
                f"{run.tps:,.0f} (none / trigger / daemon), "
                f"converged {run.converged_per_second:,.0f}/s, "
                f"backlog {run.backlog_at_end:,} keys, drain {run.drain_seconds:.2f} s, "
                f"probe lag p50/p99 {percentile(run.probe_lags, 0.5) * 1000:,.0f}/"
                f"{percentile(run.probe_lags, 0.99) * 1000:,.0f} ms, "
                f"{run.batches:,} batches",
                flush=True,
            )

    report(args, settings, baselines, with_triggers, runs)
    return 0


def report(
    args: argparse.Namespace,
    settings: Settings,
    baselines: list[float],
    with_triggers: list[float],
    runs: list[DaemonRun],
) -> None:
    baseline = statistics.median(baselines)
    with_trigger = statistics.median(with_triggers)
    tps = median_of(runs, lambda r: r.tps)
    max_delay = settings.debounce_max_delay.total_seconds()
    target = max_delay + 0.25
    width = 46

    def line(label: str, figure: str, beside: str = "") -> None:
        print(f"{label:<{width}}{figure:>12}   {beside}")

    print()
    line(f"median of {len(runs)}", "figure", "beside")
    line("pgbench TPS, no trigger", f"{baseline:,.0f}", "production's ceiling")
    line(
        "pgbench TPS, trigger only",
        f"{with_trigger:,.0f}",
        f"{with_trigger / baseline:.0%} of no trigger",
    )
    note = (
        f"throttled to {args.rate:,}" if args.rate else f"{tps / with_trigger:.0%} of trigger only"
    )
    line("pgbench TPS, trigger + daemon", f"{tps:,.0f}", note)
    line(
        "updates converged per second",
        f"{median_of(runs, lambda r: r.converged_per_second):,.0f}",
        f"{tps:,.0f} committed per second",
    )
    line(
        "sandbox rows written per second",
        f"{median_of(runs, lambda r: r.rows_per_second):,.0f}",
        "fewer than updates: repeated keys coalesce",
    )
    line(
        "notifications received per second",
        f"{median_of(runs, lambda r: r.notifications_per_second):,.0f}",
        f"{tps:,.0f} committed per second",
    )
    line(
        "batches (keys per batch)",
        f"{median_of(runs, lambda r: r.batches):,.0f}",
        f"{median_of(runs, lambda r: r.keys_per_batch):,.0f} keys each",
    )
    line(
        "backlog at load end (keys)",
        f"{median_of(runs, lambda r: r.backlog_at_end):,.0f}",
        f"{tps * max_delay:,.0f} = one max delay of commits",
    )
    line(
        "drain after load end (s)",
        f"{median_of(runs, lambda r: r.drain_seconds):.2f}",
        f"max delay {max_delay:.2f}",
    )
    line(
        "daemon process CPU (cores)",
        f"{median_of(runs, lambda r: r.cpu_seconds_per_second):.2f}",
        f"of {os.cpu_count()}, shared with pgbench and both servers",
    )
    probes = [lag for run in runs for lag in run.probe_lags]
    missing = sum(run.probes_missing for run in runs)
    for label, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        value = max(probes) if fraction == 1.0 and probes else percentile(probes, fraction)
        beside = f"target <= {target * 1000:,.0f} ms" if label == "p99" else ""
        if label == "p50":
            beside = f"{len(probes):,} probe changes, {missing} never seen"
        line(f"lag per change (probe) {label} (ms)", f"{value * 1000:,.0f}", beside)
    batch_lags = [lag for run in runs for lag in run.batch_lags]
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        line(
            f"lag per batch (daemon) {label} (ms)",
            f"{percentile(batch_lags, fraction) * 1000:,.0f}",
            f"{len(batch_lags):,} batches" if label == "p50" else "",
        )
    p99 = percentile(probes, 0.99)
    verdict = "met" if p99 <= target else f"missed by {(p99 - target) * 1000:,.0f} ms"
    print(f"\nlag target p99 <= debounce max delay + 250 ms = {target * 1000:,.0f} ms: {verdict}")


if __name__ == "__main__":
    # As ``propagator run`` does: it freezes what its imports built out of the
    # collector's passes (propagator.cli.entry_point) and collects less often
    # (run_daemon), and the daemon runs here, in this process.
    gc.freeze()
    tune_garbage_collection()
    sys.exit(main())
