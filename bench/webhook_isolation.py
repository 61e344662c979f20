"""A webhook receiver that takes seconds per request, and the event path beside it.

    python bench/webhook_isolation.py --rows 100000 --duration 15 --rounds 3 --rate 3000

The question: does an endpoint that answers every request only after
``--webhook-delay`` seconds (5 by default) slow down production -> sandbox? The
senders read the committed sync history on a connection and a thread of their
own, so the event path's figures should not move.

Two embedded servers and ``public.jobs`` as in ``event_path.py`` (its functions
are reused here: same pgbench script, same probe, same lag measures), the
triggers installed once. A ``ThreadingHTTPServer`` on 127.0.0.1 (HTTP/1.1) in
this process sleeps ``--webhook-delay`` seconds, then answers 200; it counts the
requests and the changes in them. Each round runs ``event_path.daemon_run``
twice under the same throttled pgbench load: once without webhooks and once
with one endpoint on that receiver (``max_wait = "0s"``: a batch goes as soon as
a change is there, so a request is always in flight), the order flipping every
round. Each webhook run gets an endpoint name of its own (``slow_1``,
``slow_2``, ...): its cursor starts at the newest history row when it first
looks, so every round's pending figure counts that round's history only.

Figures are per run (the probe and batch lag percentiles of that run), then the
median over the rounds of each, and the ratio with / without. For the webhook
runs, read once the sandbox has converged, just before the daemon is stopped: the
requests the receiver got while the daemon ran and the changes in them, the
gauges ``propagator_webhook_pending_changes`` and
``propagator_webhook_delivery_lag_seconds`` (set from the sender's latest look
at the history, so as old as the request it is waiting on), and the same two
figures read from the sandbox's cursor table at that moment. The daemon, the
probe and the receiver share this process, so the CPU line includes the
receiver (it only sleeps).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_description
from bench.event_path import (
    DaemonRun,
    bench_servers,
    daemon_run,
    install_capture,
    percentile,
    prepare,
)
from propagator.daemon import tune_garbage_collection
from propagator.demo.embedded import EmbeddedPostgres
from propagator.observability.logging import configure_logging
from propagator.services.outbox import Outbox
from propagator.settings import Settings
from propagator.settings.webhooks import resolve_webhooks
from propagator.testing import DaemonRunner

WITHOUT, WITH = "without webhook", "with slow webhook"


class SlowReceiver:
    """Answers every POST with 200 after ``delay`` seconds; counts requests and changes."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.requests = 0
        self.changes = 0
        self.answered = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    changes = len(json.loads(body).get("changes", []))
                except (ValueError, AttributeError):
                    changes = 0
                with receiver.lock:
                    receiver.requests += 1
                    receiver.changes += changes
                time.sleep(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver.lock:
                    receiver.answered += 1

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="slow-receiver", daemon=True
        )

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.changes

    @contextmanager
    def running(self) -> Iterator[SlowReceiver]:
        self._thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


class WebhookFigures:
    """What a webhook run adds: the receiver's counts and the daemon's pending gauge."""

    def __init__(self) -> None:
        self.requests = 0
        self.changes = 0
        self.pending = 0.0
        self.delivered = 0.0
        self.delivery_lag = 0.0
        self.pending_now = 0  # read from the sandbox's cursor table, not the gauge
        self.lag_now = 0.0


def webhook_run(
    name: str,
    receiver: SlowReceiver,
    settings: Settings,
    production: EmbeddedPostgres,
    sandbox_url: str,
    script: Path,
    args: argparse.Namespace,
    probe_value: int,
) -> tuple[DaemonRun, WebhookFigures]:
    """``daemon_run`` with one endpoint ``name`` on the slow receiver."""
    (webhook,) = resolve_webhooks(
        [{"name": name, "url": receiver.url, "max_wait": "0s"}], [settings], environ={}
    )
    figures = WebhookFigures()
    requests_before, changes_before = receiver.counts()

    def note(running: DaemonRunner) -> None:
        requests, changes = receiver.counts()
        figures.requests = requests - requests_before
        figures.changes = changes - changes_before
        figures.pending = running.metric("propagator_webhook_pending_changes")
        figures.delivered = running.metric("propagator_webhook_changes_delivered_total")
        figures.delivery_lag = running.metric("propagator_webhook_delivery_lag_seconds")
        with psycopg.connect(sandbox_url, autocommit=True) as conn:
            (status,) = Outbox(settings.history_schema).status(conn, [name])
        figures.pending_now = status.pending
        figures.lag_now = status.lag_seconds or 0.0

    run = daemon_run(
        settings,
        production,
        sandbox_url,
        script,
        args,
        probe_value,
        webhooks=[webhook],
        before_stop=note,
    )
    return run, figures


def median_ratio(without: list[float], with_: list[float]) -> tuple[float, float, float]:
    a, b = statistics.median(without), statistics.median(with_)
    return a, b, (b / a if a else float("nan"))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--rate", type=int, default=3000, help="pgbench TPS of every run")
    parser.add_argument("--probe-interval", type=float, default=0.02, help="seconds")
    parser.add_argument(
        "--webhook-delay", type=float, default=5.0, help="seconds the receiver takes per request"
    )
    args = parser.parse_args()
    if args.rate <= 0:
        parser.error("--rate must be positive: both runs need the same load")
    configure_logging(
        log_level=os.environ.get("BENCH_LOG_LEVEL", "warning"), log_format="json", stream=sys.stderr
    )

    runs: dict[str, list[DaemonRun]] = {WITHOUT: [], WITH: []}
    hooks: list[WebhookFigures] = []
    with (
        bench_servers("notify") as (production, sandbox),
        tempfile.TemporaryDirectory(prefix="propagator-bench-") as folder,
        SlowReceiver(args.webhook_delay).running() as receiver,
    ):
        production_url, sandbox_url = production.url(), sandbox.url()
        script, settings = prepare(production_url, sandbox_url, args.rows, Path(folder))
        install_capture(settings, production_url, sandbox_url)
        machine = machine_description(production_url)
        print(
            f"rows {args.rows:,}, {args.clients} pgbench clients throttled to {args.rate:,} TPS, "
            f"{args.duration} s per run, both servers local; receiver answers after "
            f"{args.webhook_delay:g} s; {machine['nproc']} CPUs, PostgreSQL "
            f"{machine['postgresql']}, Python {machine['python']}; {args.rounds} rounds",
            flush=True,
        )
        probe_value = 0
        for number in range(1, args.rounds + 1):
            order = (WITHOUT, WITH) if number % 2 else (WITH, WITHOUT)
            for kind in order:
                if kind == WITHOUT:
                    run = daemon_run(settings, production, sandbox_url, script, args, probe_value)
                else:
                    run, figures = webhook_run(
                        f"slow_{number}",
                        receiver,
                        settings,
                        production,
                        sandbox_url,
                        script,
                        args,
                        probe_value,
                    )
                    hooks.append(figures)
                probe_value += 1_000_000
                runs[kind].append(run)
                extra = ""
                if kind == WITH:
                    extra = (
                        f"; receiver got {figures.requests} requests ({figures.changes:,} "
                        f"changes), pending {figures.pending:,.0f} (gauge) / "
                        f"{figures.pending_now:,} (cursor table) history rows, "
                        f"delivery lag {figures.delivery_lag:,.1f} / {figures.lag_now:,.1f} s"
                    )
                print(
                    f"  round {number}, {kind:<17}: TPS {run.tps:,.0f}, "
                    f"converged {run.converged_per_second:,.0f}/s, "
                    f"probe lag p50/p95/p99 {percentile(run.probe_lags, 0.5) * 1000:,.0f}/"
                    f"{percentile(run.probe_lags, 0.95) * 1000:,.0f}/"
                    f"{percentile(run.probe_lags, 0.99) * 1000:,.0f} ms, "
                    f"batch lag p50/p99 {percentile(run.batch_lags, 0.5) * 1000:,.0f}/"
                    f"{percentile(run.batch_lags, 0.99) * 1000:,.0f} ms, "
                    f"{run.batches:,} batches{extra}",
                    flush=True,
                )
        # A sender stopped mid-request finishes it on its own thread: let it end here.
        deadline = time.monotonic() + args.webhook_delay + 5
        while receiver.answered < receiver.requests and time.monotonic() < deadline:
            time.sleep(0.1)

    report(args, runs, hooks)
    return 0


def _percentile_ms(attribute: str, quantile: float) -> Callable[[DaemonRun], float]:
    """A run's ``quantile`` of the lags in ``attribute`` (seconds), in milliseconds."""
    return lambda run: percentile(getattr(run, attribute), quantile) * 1000


def report(
    args: argparse.Namespace, runs: dict[str, list[DaemonRun]], hooks: list[WebhookFigures]
) -> None:
    rows: list[tuple[str, Callable[[DaemonRun], float], str]] = [
        ("pgbench TPS", lambda r: r.tps, "{:,.0f}"),
        ("updates converged per second", lambda r: r.converged_per_second, "{:,.0f}"),
        ("daemon process CPU (cores)", lambda r: r.cpu_seconds_per_second, "{:.2f}"),
        *(
            (f"lag per {what} p{round(q * 100)} ms", _percentile_ms(attribute, q), "{:,.0f}")
            for what, attribute, quantiles in (
                ("change (probe)", "probe_lags", (0.5, 0.95, 0.99)),
                ("batch (daemon)", "batch_lags", (0.5, 0.99)),
            )
            for q in quantiles
        ),
    ]
    count = len(runs[WITHOUT])
    print()
    print(
        f"| figure (medians of {count} rounds) | {WITHOUT} | {WITH} | ratio "
        f"| {WITHOUT} each round | {WITH} each round |"
    )
    print("|---|---:|---:|---:|---|---|")
    for label, pick, shape in rows:
        without = [pick(r) for r in runs[WITHOUT]]
        with_ = [pick(r) for r in runs[WITH]]
        a, b, ratio = median_ratio(without, with_)
        each_a = ", ".join(shape.format(v) for v in without)
        each_b = ", ".join(shape.format(v) for v in with_)
        print(
            f"| {label} | {shape.format(a)} | {shape.format(b)} | {ratio:.2f} "
            f"| {each_a} | {each_b} |"
        )
    webhook_rows: list[tuple[str, Callable[[WebhookFigures], float], str]] = [
        ("requests the receiver got", lambda h: h.requests, "{:,.0f}"),
        ("changes in those requests", lambda h: h.changes, "{:,.0f}"),
        ("changes acknowledged before stop", lambda h: h.delivered, "{:,.0f}"),
        ("pending gauge before stop (history rows)", lambda h: h.pending, "{:,.0f}"),
        ("history rows past the cursor before stop", lambda h: h.pending_now, "{:,.0f}"),
        ("delivery lag gauge before stop (s)", lambda h: h.delivery_lag, "{:,.1f}"),
        ("oldest undelivered change's wait before stop (s)", lambda h: h.lag_now, "{:,.1f}"),
    ]
    for label, pick_hook, shape in webhook_rows:
        values = [pick_hook(h) for h in hooks]
        each = ", ".join(shape.format(v) for v in values)
        print(f"| {label} | | {shape.format(statistics.median(values))} | | | {each} |")
    missing = {kind: sum(r.probes_missing for r in kind_runs) for kind, kind_runs in runs.items()}
    print(
        f"\nprobe changes never seen on the sandbox: {missing[WITHOUT]} without, "
        f"{missing[WITH]} with the webhook; receiver delay {args.webhook_delay:g} s"
    )


if __name__ == "__main__":
    # As event_path.py does (and ``propagator run``): the daemon runs in this process.
    gc.freeze()
    tune_garbage_collection()
    sys.exit(main())
