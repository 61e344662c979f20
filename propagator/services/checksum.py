"""Checksum reconcile: compare per-segment digests inside each server, fetch only what differs.

Each server hashes every row (keys and canonicalised mapped values, the
production side after the transforms' SQL equivalents) and returns an 8-byte
digest per segment, all packed in one value; a segment is a hash bucket of the
key, so its boundaries depend on no collation. When differences are scattered
over many segments, a finer pass does the same over the rows of the differing
ones. Only the rows of segments whose digests differ are then streamed,
key-ordered, through the same ``compare_streams``/``merge_compare`` the
streaming reconcile uses, so the plan, the report and the apply (through
``converge_keys``) are the streaming compare's, restricted to where a
difference can be. Both sides are read at once, each from one ``REPEATABLE
READ READ ONLY`` snapshot covering every pass.

Whatever the checksum cannot compare exactly (an unsupported type, a Python
callable transform, no unique key index, servers hashing differently and no
md5) makes the run fall back to the streaming compare, with the reason logged
and put in the report.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from propagator.adapters.reads import prefetch
from propagator.core.plan import JobMappingResult
from propagator.core.report import ReconcileReport
from propagator.core.segments import (
    REFINE_ABOVE_FRACTION,
    ChecksumLayout,
    NotExpressibleError,
    differing_segments,
    fine_segment_count,
    plan_layout,
    segment_count,
)
from propagator.errors import ConfigurationError, PermanentError, Side
from propagator.services.checksum_hashing import Hashing
from propagator.services.checksum_queries import SideQueries, side_queries
from propagator.services.checksum_snapshot import ServerFacts, Snapshot
from propagator.services.context import (
    AppliedHook,
    ConnectionOpener,
    ProgressCallback,
    Source,
    SyncContext,
)
from propagator.services.converge import converge_differences
from propagator.services.streaming import compare_streams

__all__ = ["Hashing", "reconcile_checksum"]

_T = TypeVar("_T")

_MIN_SERVER_VERSION = 140000  # hash_numeric_extended of numeric Infinity, trim_scale
_READ_ALL_FRACTION = 0.5

_log = logging.getLogger(__name__)


def _event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A structured event when logging is configured; a plain standard-library record otherwise.

    structlog is only looked up, not imported: importing it costs a one-shot
    ``propagator reconcile`` ~70 ms at start, and where it was never imported
    nobody configured it.
    """
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        structlog.stdlib.get_logger(__name__).log(level, event, **fields)
    else:
        _log.log(level, "%s %s", event, fields)


def _why_not(
    production: ServerFacts,
    sandbox: ServerFacts,
    layout: ChecksumLayout,
    wanted: Hashing | None,
) -> tuple[Hashing | None, str | None]:
    """The hashing both servers agree on, or the reason the checksum cannot run."""
    for side, facts in (("production", production), ("sandbox", sandbox)):
        if facts.version < _MIN_SERVER_VERSION:
            return None, f"the {side} server is older than PostgreSQL 14"
        if not facts.keys_unique:
            return None, (
                f"no unique index covers the key columns of the {side} table, "
                "so duplicate keys could hide in a checksum"
            )
    if layout.uses_whitespace and production.encoding != "UTF8":
        return None, "strip/blank_to_null need a UTF8 production database for their SQL form"
    builtin = production.builtin_probe is not None
    if builtin and production.builtin_probe == sandbox.builtin_probe and wanted != "md5":
        return "builtin", None
    md5 = production.md5_probe is not None and production.md5_probe == sandbox.md5_probe
    if md5 and wanted != "builtin":
        return "md5", None
    return None, "the servers compute different hashes and canonical forms"


def _fall_back(report: ReconcileReport, reason: str, strict: bool) -> bool:
    if strict:
        raise ConfigurationError(f"reconcile_method=checksum cannot be used: {reason}")
    report.method = "stream"
    report.fallback_reason = reason
    _event("reconcile_fallback", method="stream", reason=reason)
    return False


@dataclass(frozen=True, slots=True)
class _Passes:
    """What both servers agreed on: the hashing, the segment counts, each side's statements."""

    hashing: Hashing
    count: int
    fine_count: int
    queries: dict[Side, SideQueries]


@dataclass(frozen=True, slots=True)
class _Differing:
    """Where differences can be: each side's statements, its row total, the segments to read."""

    queries: dict[Side, SideQueries]
    totals: tuple[int, int]  # rows on each side, as the first pass counted them
    wanted: tuple[int, ...] | None  # the segments of ``mask`` to read; None: every row
    mask: int


def reconcile_checksum(
    context: SyncContext,
    open_connection: ConnectionOpener,
    report: ReconcileReport,
    *,
    apply: bool,
    source: Source = "reconcile",
    on_applied: AppliedHook | None = None,
    progress: ProgressCallback | None = None,
    on_difference: Callable[[JobMappingResult], None] | None = None,
    strict: bool = False,
    segments: int | None = None,
    hashing: Hashing | None = None,
    fine_segments: int | None = None,
    refine_above: float = REFINE_ABOVE_FRACTION,
) -> bool:
    """Run the checksum reconcile into ``report``; False when it does not apply (nothing done).

    Arguments mean what they mean for ``services.reconcile.reconcile``. ``strict``
    turns "does not apply" into a ``ConfigurationError``; ``segments`` (a power
    of two) overrides the sizing. On False the report carries
    ``fallback_reason`` and the caller streams instead. ``hashing`` forces
    "md5" (or "builtin") where both servers support it, for tests and benchmarks.

    When the differing segments hold more than ``refine_above`` of all rows
    (scattered differences touch most coarse segments), a second pass groups
    just their rows into ``fine_segments`` (a power of two, sized from the
    table by default) so only the rows of differing fine segments are fetched.
    """
    started = time.perf_counter()
    layout = _layout(context)
    if isinstance(layout, str):
        return _fall_back(report, layout, strict)
    production = Snapshot(open_connection("production"), context.production)
    sandbox = Snapshot(open_connection("sandbox"), context.sandbox)
    try:
        passes = _agree(context, layout, production, sandbox, hashing, segments, fine_segments)
        if isinstance(passes, str):
            return _fall_back(report, passes, strict)
        differing = _locate(report, production, sandbox, passes, progress, refine_above)
        _compare_differing(
            context,
            open_connection,
            report,
            production,
            sandbox,
            differing,
            apply=apply,
            source=source,
            on_applied=on_applied,
            on_difference=on_difference,
        )
    finally:
        production.end()
        sandbox.end()
    report.statistics.duration_seconds = time.perf_counter() - started
    return True


def _layout(context: SyncContext) -> ChecksumLayout | str:
    """How each key and mapped column is hashed, or why the checksum cannot express one."""
    try:
        return plan_layout(
            context.spec,
            {n: c.type_sql for n, c in context.production.columns.items()},
            {n: c.type_sql for n, c in context.sandbox.columns.items()},
        )
    except NotExpressibleError as error:
        return str(error)


def _agree(
    context: SyncContext,
    layout: ChecksumLayout,
    production: Snapshot,
    sandbox: Snapshot,
    hashing: Hashing | None,
    segments: int | None,
    fine_segments: int | None,
) -> _Passes | str:
    """Begin both snapshots and settle how to hash and segment; or why the checksum cannot run."""
    key_columns = context.spec.key_columns
    production_facts, sandbox_facts = _both(
        production, sandbox, lambda snapshot: snapshot.begin(key_columns)
    )
    agreed, reason = _why_not(production_facts, sandbox_facts, layout, hashing)
    if agreed is None:
        assert reason is not None
        return reason
    estimated_rows = max(production_facts.estimated_rows, sandbox_facts.estimated_rows)
    count = segments or segment_count(estimated_rows)
    fine_count = fine_segments or fine_segment_count(estimated_rows, count)
    if count & (count - 1) or fine_count & (fine_count - 1) or fine_count > 1 << 30:
        raise ValueError("segment counts must be powers of two (segments are int4)")
    queries = {
        snapshot.side: side_queries(
            layout,
            snapshot.table,
            snapshot.side,
            agreed,
            context.production_filter if snapshot.side == "production" else None,
        )
        for snapshot in (production, sandbox)
    }
    return _Passes(agreed, count, fine_count, queries)


def _locate(
    report: ReconcileReport,
    production: Snapshot,
    sandbox: Snapshot,
    passes: _Passes,
    progress: ProgressCallback | None,
    refine_above: float,
) -> _Differing:
    """The checksum reconcile proper: compare digests (a finer pass if worth it), say where."""
    report.method = "checksum"
    report.fallback_reason = None
    report.started_at = report.started_at or datetime.now(UTC)
    count, fine_count, queries = passes.count, passes.fine_count, passes.queries
    whole = _both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(queries[snapshot.side].whole_digest()),
    )
    _event(
        "reconcile_tables_compared",
        hashing=passes.hashing,
        equal=whole[0] == whole[1],
        production_rows=whole[0][0],
        sandbox_rows=whole[1][0],
    )
    if whole[0] == whole[1]:
        if progress is not None:
            progress(whole[0][0])
        return _Differing(queries, (whole[0][0], whole[1][0]), (), count - 1)
    production_pass, sandbox_pass = _both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(queries[snapshot.side].digests(count)),
    )
    production_rows, sandbox_rows = production_pass[0], sandbox_pass[0]
    differing = _differing(production_pass, sandbox_pass)
    _event(
        "reconcile_segments_compared",
        hashing=passes.hashing,
        segments=count,
        differing_segments=len(differing),
        production_rows=production_rows,
        sandbox_rows=sandbox_rows,
    )
    if progress is not None:
        progress(production_rows)
    wanted: tuple[int, ...] | None = differing
    mask = count - 1
    # Rows are spread evenly over segments (they are hash buckets).
    differing_share = len(differing) / count
    if differing and fine_count > count and differing_share > refine_above:
        wanted = _refine(production, sandbox, queries, differing, count, fine_count)
        mask = fine_count - 1
        differing_share = len(wanted) / fine_count
    if wanted and differing_share > _READ_ALL_FRACTION:
        # Most rows are in differing segments: reading them all is cheaper than
        # hashing every row again to pick them out.
        wanted = None
    return _Differing(queries, (production_rows, sandbox_rows), wanted, mask)


def _both(production: Snapshot, sandbox: Snapshot, run: Callable[[Snapshot], _T]) -> tuple[_T, _T]:
    """One pass on both servers at once."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="propagator-checksum") as pool:
        production_future = pool.submit(run, production)
        sandbox_future = pool.submit(run, sandbox)
        return production_future.result(), sandbox_future.result()


def _differing(
    production: tuple[int, bytes, bytes | None], sandbox: tuple[int, bytes, bytes | None]
) -> tuple[int, ...]:
    """``differing_segments``, its refusal of a malformed pass as the reconcile's error."""
    try:
        return differing_segments(production[1], production[2], sandbox[1], sandbox[2])
    except ValueError as error:
        raise PermanentError(
            f"checksum reconcile: {error}; set PROPAGATOR_RECONCILE_METHOD=stream"
        ) from None


def _refine(
    production: Snapshot,
    sandbox: Snapshot,
    queries: dict[Side, SideQueries],
    differing: tuple[int, ...],
    count: int,
    fine_count: int,
) -> tuple[int, ...]:
    """The differing segments of a second, finer pass over the rows of ``differing`` only."""
    for snapshot in (production, sandbox):
        snapshot.allow_fine_pass_memory()
    production_pass, sandbox_pass = _both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(
            queries[snapshot.side].finer_digests(count, differing, fine_count)
        ),
    )
    fine = _differing(production_pass, sandbox_pass)
    _event(
        "reconcile_segments_refined",
        segments=fine_count,
        differing_segments=len(fine),
        production_rows=production_pass[0],
        sandbox_rows=sandbox_pass[0],
    )
    return fine


def _compare_differing(
    context: SyncContext,
    open_connection: ConnectionOpener,
    report: ReconcileReport,
    production: Snapshot,
    sandbox: Snapshot,
    differing: _Differing,
    *,
    apply: bool,
    source: Source,
    on_applied: AppliedHook | None,
    on_difference: Callable[[JobMappingResult], None] | None,
) -> None:
    """Stream the ``wanted`` segments (None: every row) through ``merge_compare``; converge.

    The rows not read are in segments equal on both sides: matched, unchanged,
    and as many on each side, which is checked against the first pass's totals.
    """
    stats = report.statistics
    queries, wanted, mask = differing.queries, differing.wanted, differing.mask
    if wanted is None or wanted:
        production_rows = prefetch(production.rows(queries["production"].rows(mask, wanted)))
        sandbox_rows = prefetch(sandbox.rows(queries["sandbox"].rows(mask, wanted)))
        converge_differences(
            context,
            compare_streams(context, production_rows, sandbox_rows, stats, None),
            report,
            open_connection if apply else None,
            source=source,
            on_applied=on_applied,
            on_difference=on_difference,
        )
    totals = differing.totals
    equal_rows = totals[0] - stats.production_rows
    if equal_rows < 0 or equal_rows != totals[1] - stats.sandbox_rows:
        raise PermanentError(
            "checksum reconcile read rows that do not add up to what it summarised "
            f"({stats.production_rows}/{stats.sandbox_rows} read of "
            f"{totals[0]}/{totals[1]}, the rest in equal segments); "
            "set PROPAGATOR_RECONCILE_METHOD=stream"
        )
    stats.production_rows += equal_rows
    stats.sandbox_rows += equal_rows
    stats.matched += equal_rows
