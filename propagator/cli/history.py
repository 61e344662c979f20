"""``propagator history``: what propagator changed in the sandbox, newest first.

Filters by mapping (``--mapping``, repeatable; default: the selected mappings),
key (``10001-A`` or a JSON array), field, source and time (ISO or an age such as
``1h``); prints a table for people or ``--format json`` for tools. Mappings
whose history lives in different sandboxes are shown one sandbox after another,
each under a line naming it (password masked) and its mappings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime

from propagator.errors import ExitCode
from propagator.services.history import (
    History,
    HistoryEntry,
    HistoryPage,
    HistoryQuery,
    HistorySandbox,
    history_sandboxes,
)
from propagator.services.sync import SyncSession
from propagator.settings import load_configuration

__all__ = ["render_table", "run"]

_VALUE_WIDTH = 24


def run(args: argparse.Namespace) -> int:
    configuration = load_configuration(args.config, selection=args.mappings)
    filters = HistoryQuery.from_params(
        {
            name: getattr(args, name)
            for name in ("key", "field", "source", "since", "until", "limit", "before")
        }
    )
    # Every table is read before anything is printed: an error is one line, not half an answer.
    pages = [(place, _read(place, filters)) for place in history_sandboxes(configuration.mappings)]
    if len(pages) == 1:
        page = pages[0][1]
        if args.format == "json":
            print(json.dumps(page.as_dict(), indent=2, default=str))
        else:
            print(render_table(page, show_mapping=configuration.named))
    elif args.format == "json":
        groups = [place.describe() | page.as_dict() for place, page in pages]
        print(json.dumps(groups, indent=2, default=str))
    else:
        print(
            "\n\n".join(
                f"{place.heading()}\n{render_table(page, mappings=place.names, show_mapping=True)}"
                for place, page in pages
            )
        )
    return ExitCode.OK


def _read(place: HistorySandbox, filters: HistoryQuery) -> HistoryPage:
    """One history table's page, for the selected mappings that write into it."""
    history = History(place.settings)
    with SyncSession(place.settings, application_name="propagator history") as session:
        return history.read(
            session.open_sandbox(), dataclasses.replace(filters, mappings=place.names)
        )


def _clip(text: str, width: int = _VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(moment: datetime) -> str:
    return moment.astimezone().isoformat(sep=" ", timespec="seconds")


def _lag(entry: HistoryEntry) -> str:
    lag = entry.lag_seconds
    if lag is None:
        return "-"
    return f"{lag * 1000:.0f}ms" if lag < 10 else f"{lag:.1f}s"


def render_table(
    page: HistoryPage, *, mappings: Sequence[str] = (), show_mapping: bool = False
) -> str:
    """A fixed-width table; values show as stored JSON (12.10, "red", null).

    ``mappings``: the ``--mapping`` options that read this table again, for the
    next-page hint when several tables are shown. The MAPPING column is shown
    when the settings name mappings (without them every row is ``default``).
    """
    if not page.entries:
        return "no history entries match"
    header: tuple[str, ...] = (
        "ID",
        "APPLIED",
        "MAPPING",
        "SOURCE",
        "KEY",
        "FIELD",
        "OLD",
        "NEW",
        "LAG",
    )
    rows: list[tuple[str, ...]] = [
        (
            str(entry.id),
            _time(entry.applied_at),
            entry.mapping,
            entry.source,
            entry.key_label,
            entry.field,
            _clip(entry.old_json),
            _clip(entry.new_json),
            _lag(entry),
        )
        for entry in page.entries
    ]
    if not show_mapping:
        header = header[:2] + header[3:]
        rows = [row[:2] + row[3:] for row in rows]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    if page.next_before is not None:
        options = "".join(f"--mapping {name} " for name in mappings)
        lines.append(f"(more: {options}--before {page.next_before})")
    return "\n".join(lines)
