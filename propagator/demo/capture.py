"""Step 5 of the demo: what production needs so its changes reach the daemon.

``notify`` installs the triggers, as ``propagator triggers install`` does;
``logical`` the publication and the replication slot, as ``propagator capture
install`` does (no trigger). The demo's two mappings read the same production
table: one trigger set, or one publication and one slot, serves both.
"""

from __future__ import annotations

from collections.abc import Sequence

from propagator.adapters.connections import open_connection
from propagator.services import capture, triggers
from propagator.services.capture_plan import logical_targets
from propagator.settings import Settings, watched_tables

__all__ = ["install_capture", "install_title"]


def install_title(mappings: Sequence[Settings]) -> str:
    """The step's heading: what is installed, and the command a user would run for it."""
    if mappings[0].capture == "logical":
        return (
            "Installing the publication and replication slot (logical capture): "
            "`propagator capture install`"
        )
    return "Installing the production triggers: `propagator triggers install`"


def install_capture(mappings: Sequence[Settings]) -> list[str]:
    """Install what the mappings' capture needs on production; the lines that say what."""
    if mappings[0].capture == "logical":
        return _install_logical(mappings)
    (table,) = watched_tables(mappings)
    with open_connection(mappings[0], "production", "demo") as conn:
        triggers.install(conn, table)
    return [
        f"✓ on {table.table}, notifying channel {table.channel} when fab_order changes: "
        f"one trigger set serves both mappings ({', '.join(table.names)})"
    ]


def _install_logical(mappings: Sequence[Settings]) -> list[str]:
    """One publication and one slot: the slot is created outside any transaction."""
    (target,) = logical_targets(watched_tables(mappings))
    with open_connection(target.settings, "production", "demo", autocommit=True) as conn:
        outcome = capture.install(conn, target)
    tables = ", ".join(
        f"{entry.table} ({'whole rows' if entry.columns is None else ', '.join(entry.columns)})"
        for entry in outcome.tables
    )
    action = "is current" if outcome.publication == "current" else outcome.publication
    return [
        f"✓ publication {target.publication} {action}: {tables}",
        f"✓ replication slot {target.slot} {outcome.slot} (pgoutput) at {outcome.slot_lsn}: "
        f"one publication and one slot serve both mappings ({', '.join(target.names)}), "
        "no trigger on production",
    ]
