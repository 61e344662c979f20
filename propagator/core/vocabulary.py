"""Words the command line, logs, metrics and the history share.

Kept in the core, free of any driver, so the command line can describe its
options without loading what a subcommand needs to run.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["HISTORY_DEFAULT_LIMIT", "HISTORY_MAX_LIMIT", "SOURCES", "Source"]

Source = Literal["event", "catchup", "reconcile", "manual", "refresh"]
"""Where a change to the sandbox came from."""
SOURCES: Final[tuple[str, ...]] = get_args(Source)

HISTORY_DEFAULT_LIMIT: Final = 50
"""History entries a page holds unless asked otherwise."""
HISTORY_MAX_LIMIT: Final = 10_000
