"""A command over the selected mappings: one heading each, one exit code for all.

With ``[[mappings]]`` in the file, each mapping runs under a heading with its
name, and a mapping that fails (its sandbox unreachable, a column dropped) is
reported on one line and does not keep the others from running: the command
exits with the worst code. Without ``[[mappings]]`` the one mapping runs bare,
its error ending the command exactly as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from propagator.errors import ExitCode, PropagatorError
from propagator.settings import Configuration, Settings

__all__ = ["Outcome", "heading", "names", "report_error", "run_each", "worst"]

T = TypeVar("T")

# Most severe first: a setting to fix outranks a database that may come back, which
# outranks rows the sandbox refused, which outrank differences a run would fix.
_SEVERITY = (
    ExitCode.INTERRUPTED,
    ExitCode.USAGE,
    ExitCode.DATABASE_UNAVAILABLE,
    ExitCode.ROWS_FAILED,
    ExitCode.DIFFERENCES_FOUND,
)


class Status(Protocol):
    """What ``triggers status`` and ``capture status`` report of one table or database."""

    @property
    def current(self) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Status)


def report_status(state: S, args: argparse.Namespace, print_text: Callable[[S], None]) -> int:
    """Print ``state`` as JSON or text; with ``--check``, exit 1 unless it is current."""
    if args.format == "json":
        print(json.dumps(state.as_dict(), indent=2))
    else:
        print_text(state)
    return ExitCode.DIFFERENCES_FOUND if args.check and not state.current else ExitCode.OK


def worst(codes: Iterable[int]) -> int:
    """The most severe of ``codes`` (0 when all are 0); unknown codes rank first."""
    found = set(codes) - {ExitCode.OK}
    if not found:
        return ExitCode.OK
    unknown = sorted(code for code in found if code not in _SEVERITY)
    if unknown:
        return unknown[0]
    return min(found, key=_SEVERITY.index)


def heading(text: str) -> str:
    return f"== {text} =="


def report_error(subject: str, error: PropagatorError) -> None:
    """One line on stderr, after what stdout already holds so it stands under its heading."""
    sys.stdout.flush()
    print(f"propagator: error: {subject}: {error}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one mapping gave: its result, or the error that ended it."""

    settings: Settings
    result: T | None = None
    error: PropagatorError | None = None

    @property
    def name(self) -> str:
        return self.settings.mapping_name

    def exit_code(self, code_of: Callable[[T], int]) -> int:
        """The error's code, else the code ``code_of`` gives the result."""
        if self.error is not None:
            return self.error.exit_code
        assert self.result is not None
        return code_of(self.result)


def run_each(
    configuration: Configuration,
    action: Callable[[Settings], T],
    *,
    headings: bool = True,
) -> list[Outcome[T]]:
    """``action`` on every selected mapping, in order.

    Named mappings run under ``== mapping NAME ==`` (``headings``: off when stdout
    must stay one document), and a ``PropagatorError`` is one line naming the
    mapping before the next runs. The one unnamed mapping runs as the command
    always did: its error propagates to the command's error policy.
    """
    if not configuration.named:
        return [Outcome(settings, action(settings)) for settings in configuration.mappings]
    outcomes: list[Outcome[T]] = []
    for number, settings in enumerate(configuration.mappings):
        if headings:
            if number:
                print()
            print(heading(f"mapping {settings.mapping_name}"), flush=True)
        try:
            outcomes.append(Outcome(settings, action(settings)))
        except PropagatorError as error:
            report_error(f"mapping {settings.mapping_name}", error)
            outcomes.append(Outcome(settings, error=error))
    return outcomes


def names(mappings: Sequence[Settings]) -> str:
    """``mapping jobs`` or ``mappings jobs, orders``: who a shared step serves."""
    label = "mapping" if len(mappings) == 1 else "mappings"
    return f"{label} {', '.join(m.mapping_name for m in mappings)}"
