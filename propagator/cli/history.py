"""``propagator history``: what propagator changed in the sandbox, newest first.

Filters by key (``10001-A`` or a JSON array), field, source and time (ISO or an
age such as ``1h``); prints a table for people or ``--format json`` for tools.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime

from propagator.errors import ExitCode
from propagator.services.history import (
    History,
    HistoryEntry,
    HistoryPage,
    HistoryQuery,
)
from propagator.services.sync import SyncSession
from propagator.settings import load_settings

__all__ = ["render_table", "run"]

_VALUE_WIDTH = 24


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    filters = HistoryQuery.from_params(
        {
            name: getattr(args, name)
            for name in ("key", "field", "source", "since", "until", "limit", "before")
        }
    )
    history = History(settings)
    with SyncSession(settings, application_name="propagator history") as session:
        page = history.read(session.open_sandbox(), filters)
    if args.format == "json":
        print(json.dumps(page.as_dict(), indent=2, default=str))
    else:
        print(render_table(page))
    return ExitCode.OK


def _clip(text: str, width: int = _VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(moment: datetime) -> str:
    return moment.astimezone().isoformat(sep=" ", timespec="seconds")


def _lag(entry: HistoryEntry) -> str:
    lag = entry.lag_seconds
    if lag is None:
        return "-"
    return f"{lag * 1000:.0f}ms" if lag < 10 else f"{lag:.1f}s"


def render_table(page: HistoryPage) -> str:
    """A fixed-width table; values show as stored JSON (12.10, "red", null)."""
    if not page.entries:
        return "no history entries match"
    header = ("ID", "APPLIED", "SOURCE", "KEY", "FIELD", "OLD", "NEW", "LAG")
    rows: list[Sequence[str]] = [
        (
            str(entry.id),
            _time(entry.applied_at),
            entry.source,
            entry.key_label,
            entry.field,
            _clip(entry.old_json),
            _clip(entry.new_json),
            _lag(entry),
        )
        for entry in page.entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    if page.next_before is not None:
        lines.append(f"(more: --before {page.next_before})")
    return "\n".join(lines)
