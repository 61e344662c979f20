"""Benchmark the event path: production UPDATEs -> trigger -> daemon -> sandbox.

    python bench/event_path.py --rows 100000 --duration 20 --clients 4

Two embedded servers; ``public.jobs`` loaded identically on both. Three pgbench
runs of the same custom script (``fab_order = fab_order + 1`` on a random row),
in the same process so the figures are comparable on a noisy machine:

  baseline   no trigger, no daemon          (production's ceiling)
  triggers   the propagator trigger only    (what the trigger costs production)
  daemon     trigger + ``propagator run``   (default debounce settings)

For the daemon run it reports the sustained rate the sandbox kept up with
(production transactions / time until the sandbox was equal again), rows
written to the sandbox per second (lower than transactions: the debounce buffer
coalesces repeated keys), notifications per second, and the commit-to-sandbox
latency per batch: the production change time carried in the payload (the
earliest change in the batch) to the sandbox commit, p50/p95/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_jobs, servers
from propagator.adapters.embedded import EmbeddedPostgres
from propagator.daemon import Daemon
from propagator.observability.logging import configure_logging
from propagator.services import triggers
from propagator.settings import load_settings

SCRIPT = """\\set id random(1, {rows})
UPDATE jobs SET fab_order = fab_order + 1 WHERE id = :id;
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
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class DaemonThread:
    """The daemon on its own event loop; every observed batch lag is kept."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.lags: list[float] = []
        observe = daemon.metrics.observe_lag

        def keep(change_epoch_seconds: float, now: float | None = None) -> float:
            lag = observe(change_epoch_seconds, now)
            self.lags.append(lag)
            return lag

        daemon.metrics.observe_lag = keep  # type: ignore[method-assign]
        self.thread = threading.Thread(target=lambda: asyncio.run(daemon.run()), daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.daemon.started.wait(30)
        deadline = time.monotonic() + 120
        while not (self.daemon.role == "leader" and self.daemon.catchup_done):
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not become a caught-up leader")
            time.sleep(0.1)

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(60)


def counter(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=20, help="seconds of the daemon run")
    parser.add_argument("--baseline-duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="throttle the daemon run to this many TPS (0: as fast as production goes); "
        "latency is only meaningful at a rate the event path sustains",
    )
    args = parser.parse_args()
    configure_logging(
        log_level=os.environ.get("BENCH_LOG_LEVEL", "warning"), log_format="json", stream=sys.stderr
    )

    with (
        servers("production", "sandbox") as (production, sandbox),
        tempfile.TemporaryDirectory(prefix="propagator-bench-") as folder,
    ):
        production_url, sandbox_url = production.url(), sandbox.url()
        load_jobs(production_url, args.rows)
        load_jobs(sandbox_url, args.rows)
        script = Path(folder) / "update_fab_order.sql"
        script.write_text(SCRIPT.format(rows=args.rows))
        settings = load_settings(
            production_database_url=production_url,
            sandbox_database_url=sandbox_url,
            http_port=0,
            reconcile_interval="0",
        )

        throttle = f", daemon run throttled to {args.rate:,} TPS" if args.rate else ""
        print(f"rows {args.rows:,}, {args.clients} pgbench clients{throttle}, both servers local")
        baseline = pgbench(production, script, args.clients, args.baseline_duration)
        with psycopg.connect(production_url, autocommit=True) as conn:
            triggers.install(conn, settings)
        with_trigger = pgbench(production, script, args.clients, args.baseline_duration)

        running = DaemonThread(Daemon(settings, handle_signals=False))
        with psycopg.connect(sandbox_url, autocommit=True) as conn:
            conn.execute("TRUNCATE jobs")
        load_jobs(sandbox_url, args.rows)  # differs from production by the runs above
        running.start()  # the catch-up converges those rows before the measured run
        daemon = running.daemon
        rows_before = counter(daemon, "propagator_rows_applied_total", source="event")
        received_before = counter(daemon, "propagator_notifications_received_total")
        started = time.monotonic()
        with_daemon = pgbench(production, script, args.clients, args.duration, args.rate)
        load_ended = time.monotonic()
        target = table_sum(production_url)
        while table_sum(sandbox_url) != target:
            if time.monotonic() - load_ended > 120:
                raise RuntimeError("the sandbox did not converge within 120 s")
            time.sleep(0.02)
        converged = time.monotonic()
        rows_applied = (
            counter(daemon, "propagator_rows_applied_total", source="event") - rows_before
        )
        received = counter(daemon, "propagator_notifications_received_total") - received_before
        coalesced = counter(daemon, "propagator_keys_coalesced_total")
        running.stop()

    transactions = with_daemon * args.duration
    elapsed = converged - started
    lags = running.lags
    print()
    print(f"{'pgbench TPS (production)':<44}{'figure':>12}   baseline")
    share = with_trigger / baseline
    print(
        f"{'  with the trigger':<44}{with_trigger:>12,.0f}   {baseline:,.0f} without ({share:.0%})"
    )
    note = (
        f"throttled to {args.rate:,}" if args.rate else f"{with_daemon / baseline:.0%} of baseline"
    )
    print(f"{'  with the trigger and the daemon':<44}{with_daemon:>12,.0f}   ({note})")
    print()
    print(f"{'event path (daemon run)':<44}{'figure':>12}")
    print(
        f"{'  updates converged per second':<44}{transactions / elapsed:>12,.0f}   "
        f"{with_daemon:,.0f} committed per second"
    )
    print(f"{'  sandbox caught up after load ended (s)':<44}{converged - load_ended:>12.3f}")
    print(f"{'  notifications per second':<44}{received / args.duration:>12,.0f}")
    print(
        f"{'  sandbox rows written per second':<44}{rows_applied / elapsed:>12,.0f}   "
        f"({coalesced:,.0f} keys coalesced in the buffer)"
    )
    if lags:
        print(f"{'  batches':<44}{len(lags):>12,}")
        for label, value in (
            ("p50", statistics.median(lags)),
            ("p95", percentile(lags, 0.95)),
            ("p99", percentile(lags, 0.99)),
            ("max", max(lags)),
        ):
            print(
                f"{'  oldest change in batch -> commit ' + label + ' (ms)':<44}"
                f"{value * 1000:>12.1f}   (debounce: quiet 50 ms, max delay 500 ms)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
