"""The streaming compare: both tables read in key order and merged, differences converged.

``compare_streams`` is the compare both reconcile methods end in (the checksum
compare feeds it only the rows of differing segments); ``reconcile_stream`` is
the streaming method itself, reading every row of both tables.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, compress, islice
from operator import itemgetter, ne
from typing import Any

from propagator.adapters.reads import prefetch, stream_rows
from propagator.core.mapping import MappingSpec
from propagator.core.plan import FitChecks, JobMappingResult, MappingStatistics, merge_compare
from propagator.core.report import ReconcileReport
from propagator.services.context import (
    AppliedHook,
    ConnectionOpener,
    ProgressCallback,
    Source,
    SyncContext,
)
from propagator.services.converge import converge_differences
from propagator.services.typefit import fit_checks

__all__ = ["compare_streams", "reconcile_stream"]

_WINDOW_ROWS = 5000


def reconcile_stream(
    context: SyncContext,
    open_connection: ConnectionOpener,
    report: ReconcileReport,
    *,
    apply: bool,
    source: Source,
    on_applied: AppliedHook | None,
    progress: ProgressCallback | None,
    on_difference: Callable[[JobMappingResult], None] | None,
) -> ReconcileReport:
    """Compare every row of both tables, each streamed at once from its own snapshot.

    With ``apply``, differing keys are converged in batches through
    ``converge_keys`` while the compare goes on.
    """
    report.method = "stream"
    started = time.perf_counter()
    report.started_at = report.started_at or datetime.now(UTC)
    spec = context.spec
    stats = report.statistics
    production_stream = open_connection("production")
    sandbox_stream = open_connection("sandbox")
    production_rows = prefetch(
        stream_rows(
            production_stream,
            context.production,
            spec.key_columns,
            context.source_reads,
            where=context.production_filter,
            parallel_workers=context.parallel_workers,
        )
    )
    sandbox_rows = prefetch(
        stream_rows(
            sandbox_stream,
            context.sandbox,
            spec.key_columns,
            spec.target_columns,
            parallel_workers=context.parallel_workers,
        )
    )
    converge_differences(
        context,
        compare_streams(context, production_rows, sandbox_rows, stats, progress),
        report,
        open_connection if apply else None,
        source=source,
        on_applied=on_applied,
        on_difference=on_difference,
    )
    stats.duration_seconds = time.perf_counter() - started
    return report


def _counting(rows: Iterator[tuple[Any, ...]], progress: ProgressCallback | None) -> Iterator[Any]:
    if progress is None:
        yield from rows
        return
    for count, row in enumerate(rows, 1):
        if count % 50_000 == 0:
            progress(count)
        yield row


def _raw_rows_comparable(context: SyncContext) -> bool:
    """Whether equal raw rows are equal rows: no transforms, same column types both sides.

    Values of one column type load as one Python type, for which ``==`` agrees
    with ``values_equal`` wherever it says True (NaN != NaN simply takes the
    slow path).
    """
    production, sandbox = context.production.columns, context.sandbox.columns
    return all(
        m.transform is None and production[m.source].type_sql == sandbox[m.target].type_sql
        for m in context.spec.field_mappings
    )


@dataclass(slots=True)
class _Window:
    """One side's rows read ahead, up to a window's worth at a time."""

    rows: Iterator[tuple[Any, ...]]
    buffer: list[tuple[Any, ...]] = field(default_factory=list)
    done: bool = False

    def fill(self) -> None:
        if not self.done and len(self.buffer) < _WINDOW_ROWS:
            more = list(islice(self.rows, _WINDOW_ROWS))
            self.buffer += more
            self.done = len(more) < _WINDOW_ROWS

    def rest(self) -> Iterator[tuple[Any, ...]]:
        """Every row not compared yet: the buffer, then the stream."""
        return chain(self.buffer, self.rows)


def compare_streams(
    context: SyncContext,
    production_rows: Iterable[tuple[Any, ...]],
    sandbox_rows: Iterable[tuple[Any, ...]],
    stats: MappingStatistics,
    progress: ProgressCallback | None,
) -> Iterator[JobMappingResult]:
    """``merge_compare`` of both streams, with rows identical on both sides counted in bulk.

    Both streams are cut into windows of keys below a common boundary; rows
    present unchanged on both sides are removed with set operations (C speed)
    and counted as matched, and only the rest goes through ``merge_compare``,
    which stays the judge of every difference. Memory is bounded by the window.
    """
    spec, checks = context.spec, fit_checks(context)  # checks: None unless a column narrows
    if not _raw_rows_comparable(context):
        yield from merge_compare(
            _counting(iter(production_rows), progress), sandbox_rows, spec, stats, checks
        )
        return
    # A key is a tuple, or the bare value for one column: both order and compare alike.
    key_of = itemgetter(*range(context.key_width))
    production, sandbox = _Window(iter(production_rows)), _Window(iter(sandbox_rows))
    compared = reported = 0
    emitted: Any = None  # every key below this one has been compared
    while True:
        production.fill()
        sandbox.fill()
        if not production.buffer and not sandbox.buffer:
            return
        production_keys = list(map(key_of, production.buffer))
        sandbox_keys = list(map(key_of, sandbox.buffer))
        if not (_ascending(production_keys, emitted) and _ascending(sandbox_keys, emitted)):
            # Out of key order: merge_compare reports it precisely.
            yield from merge_compare(production.rest(), sandbox.rest(), spec, stats, checks)
            return
        production_cut, sandbox_cut = len(production.buffer), len(sandbox.buffer)
        if not (production.done and sandbox.done):
            boundary = _boundary(production, production_keys, sandbox, sandbox_keys)
            production_cut = bisect_left(production_keys, boundary)
            sandbox_cut = bisect_left(sandbox_keys, boundary)
            if production_cut == 0 and sandbox_cut == 0:  # one key fills a window: duplicates
                yield from merge_compare(production.rest(), sandbox.rest(), spec, stats, checks)
                return
            emitted = boundary
        yield from _compare_window(
            spec,
            production.buffer[:production_cut],
            production_keys[:production_cut],
            sandbox.buffer[:sandbox_cut],
            sandbox_keys[:sandbox_cut],
            stats,
            checks,
        )
        del production.buffer[:production_cut]
        del sandbox.buffer[:sandbox_cut]
        compared += production_cut
        if progress is not None and compared - reported >= 50_000:
            reported = compared
            progress(compared)


def _boundary(
    production: _Window, production_keys: list[Any], sandbox: _Window, sandbox_keys: list[Any]
) -> Any:
    """The lowest last key of a side still being read: every row below it has been read."""
    open_ends = []
    if not production.done:
        open_ends.append(production_keys[-1])
    if not sandbox.done:
        open_ends.append(sandbox_keys[-1])
    return min(open_ends)


def _ascending(keys: list[Any], floor: Any) -> bool:
    """Keys sorted as Python sorts them (a sorted list costs one linear pass), none below floor."""
    return keys == sorted(keys) and (floor is None or not keys or keys[0] >= floor)


def _compare_window(
    spec: MappingSpec,
    production: list[tuple[Any, ...]],
    production_keys: list[Any],
    sandbox: list[tuple[Any, ...]],
    sandbox_keys: list[Any],
    stats: MappingStatistics,
    checks: FitChecks,
) -> Iterator[JobMappingResult]:
    checked = all(len(set(keys)) == len(keys) for keys in (production_keys, sandbox_keys))
    if checked and production == sandbox:
        same = len(production)
        production = sandbox = []
    elif checked and production_keys == sandbox_keys:
        # Same keys in the same order: compare row by row in C, keep the differing ones.
        differing = list(compress(range(len(production)), map(ne, production, sandbox)))
        production = [production[i] for i in differing]
        sandbox = [sandbox[i] for i in differing]
        same = len(production_keys) - len(differing)
    elif checked:
        try:
            in_sandbox, in_production = set(sandbox), set(production)
        except TypeError:  # an unhashable value (json, arrays): compare row by row
            in_sandbox = in_production = set()
        production = [row for row in production if row not in in_sandbox]
        sandbox = [row for row in sandbox if row not in in_production]
        same = len(production_keys) - len(production)
    else:
        same = 0  # duplicated keys: merge_compare raises the precise error
    stats.production_rows += same
    stats.sandbox_rows += same
    stats.matched += same
    if production or sandbox:
        yield from merge_compare(production, sandbox, spec, stats, checks)
