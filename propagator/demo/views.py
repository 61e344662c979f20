"""How the demo's live phase looks: plain lines in a log or pipe, a live panel on a terminal.

``rich`` is imported only when the live panel starts, so ``--plain`` and
piped output never load it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from propagator.core.mapping import format_key
from propagator.core.report import show_value
from propagator.demo.events import BulkVisible, ChangeMade, ChangeVisible, DemoEvent, LatencyFigures
from propagator.demo.interrupts import Interrupts
from propagator.demo.live import LiveRun
from propagator.demo.servers import MAIN_MAPPING
from propagator.testing import DaemonRunner

__all__ = ["PlainView", "RichView", "View", "figures_line", "ms"]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def figures_line(label: str, figures: LatencyFigures) -> str:
    if not figures.count:
        return f"  {label:<22} n=0"
    return (
        f"  {label:<22} n={figures.count:<5} p50 {ms(figures.p50):>7}   "
        f"p99 {ms(figures.p99):>7}   max {ms(figures.max):>7}"
    )


class View(Protocol):
    def start(self, live: LiveRun, daemon: DaemonRunner) -> None: ...
    def event(self, event: DemoEvent) -> None: ...
    def tick(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class PlainView:
    """One line per change as it becomes visible: readable in a log or a pipe."""

    out: TextIO
    live: LiveRun | None = None
    interrupts: Interrupts | None = None
    _announced_stop: bool = False

    def start(self, live: LiveRun, daemon: DaemonRunner) -> None:
        self.live = live

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def event(self, event: DemoEvent) -> None:
        elapsed = f"+{self.live.elapsed:5.2f}s" if self.live else ""
        if isinstance(event, ChangeVisible) and event.kind == "single":
            self._say(
                f"  {elapsed}  {format_key(event.key):<8} fab_order "
                f"{show_value(event.old)} → {show_value(event.new)}  "
                f"visible in sandbox after {ms(event.latency)}"
            )
        elif isinstance(event, ChangeMade) and event.kind == "bulk":
            self._say(
                f"  {elapsed}  bulk: {event.statement} → {event.rows} rows changed, "
                f"{event.mirrored} of them exist in the sandbox"
            )
        elif isinstance(event, BulkVisible):
            self._say(
                f"  {elapsed}  bulk: all {event.rows} sandbox rows show the new values "
                f"(p50 {ms(event.p50)}, max {ms(event.max)})"
            )

    def tick(self) -> None:
        if self.interrupts is not None and self.interrupts.requested and not self._announced_stop:
            self._announced_stop = True
            self._say("  Ctrl-C: no more changes; waiting for the sandbox (Ctrl-C again aborts)")

    def stop(self) -> None:
        return


@dataclass
class RichView:
    """A live panel: progress, the latest changes with their latency, running figures."""

    interrupts: Interrupts
    live: LiveRun | None = None
    daemon: DaemonRunner | None = None
    _display: Any = None
    _last_refresh: float = 0.0
    _notes: list[str] = field(default_factory=list)

    def start(self, live: LiveRun, daemon: DaemonRunner) -> None:
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
                f"(p50 {ms(event.p50)}, max {ms(event.max)})"
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
                ms(change.latency),
                style="dim" if change.kind == "bulk" else None,
            )
        figures = live.figures()
        summary = Text(
            f"changes: {live.singles} single-row, bulk {live.bulk_rows} rows · "
            f"visible {live.visible} · on the way {len(live.propagation.pending)} · "
            f"p50 {ms(figures.p50)} · p99 {ms(figures.p99)}"
        )
        main = {"mapping": MAIN_MAPPING}  # the sandbox this view watches
        received = "notifications" if daemon.daemon.settings.capture == "notify" else "slot reads"
        metrics = Text(
            f"daemon, mapping {MAIN_MAPPING}: "
            f"{daemon.metric('propagator_notifications_received_total', **main):.0f} "
            f"{received} · "
            f"{daemon.metric('propagator_batches_applied_total', source='event', **main):.0f} "
            "batches · "
            f"{daemon.metric('propagator_rows_applied_total', source='event', **main):.0f} "
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
