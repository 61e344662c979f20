"""Checksum reconcile: compare digests inside each server, fetch only what differs.

Each server hashes every row (keys and canonicalised mapped values, the
production side after the transforms' SQL equivalents) into one digest of
the whole table; equal tables end there. Otherwise each returns an 8-byte
digest per segment, all packed in one value; a segment is a hash bucket of
the key, so its boundaries depend on no collation. The rows of the differing
segments are then narrowed down by each row's hash (or, for very many rows,
a finer pass; see ``checksum_locate``), and only the rows left are streamed,
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

import time
from collections.abc import Callable, Iterator
from typing import Any

from propagator.adapters.reads import prefetch
from propagator.core.plan import JobMappingResult
from propagator.core.report import ReconcileReport
from propagator.core.segments import (
    HASHED_ROWS_MAX,
    REFINE_ABOVE_FRACTION,
    SPARSE_SEGMENTS,
    ChecksumLayout,
    NotExpressibleError,
    fine_segment_count,
    plan_layout,
    segment_count,
)
from propagator.errors import ConfigurationError, PermanentError
from propagator.services.both_sides import on_both
from propagator.services.checksum_hashing import Hashing
from propagator.services.checksum_locate import Differing, Passes, both, event, locate
from propagator.services.checksum_queries import side_queries
from propagator.services.checksum_sample import DifferenceSample
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

_MIN_SERVER_VERSION = 140000  # hash_numeric_extended of numeric Infinity, trim_scale


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
    event("reconcile_fallback", method="stream", reason=reason)
    return False


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
    hashed_rows_max: int = HASHED_ROWS_MAX,
    sparse_segments: int = SPARSE_SEGMENTS,
) -> bool:
    """Run the checksum reconcile into ``report``; False when it does not apply (nothing done).

    Arguments mean what they mean for ``services.reconcile.reconcile``. ``strict``
    turns "does not apply" into a ``ConfigurationError``; ``segments`` (a power
    of two) overrides the sizing, else a sample saying few rows differ picks
    ``sparse_segments`` (``checksum_sample``). On False the report carries
    ``fallback_reason`` and the caller streams instead. ``hashing`` forces
    "md5" (or "builtin") where both servers support it, for tests and benchmarks.

    Differing segments with over ``refine_above`` of the rows are narrowed down by row
    hashes (up to ``hashed_rows_max`` rows), else a pass into ``fine_segments``.
    """
    started = time.perf_counter()
    layout = _layout(context)
    if isinstance(layout, str):
        return _fall_back(report, layout, strict)
    production, sandbox = _snapshots(context, open_connection)
    try:
        sizing = (segments, fine_segments, sparse_segments)
        passes = _agree(context, layout, production, sandbox, hashing, sizing)
        if isinstance(passes, str):
            return _fall_back(report, passes, strict)
        differing = locate(
            report, production, sandbox, passes, progress, (refine_above, hashed_rows_max)
        )
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


def _snapshots(
    context: SyncContext, open_connection: ConnectionOpener
) -> tuple[Snapshot, Snapshot]:
    """Each side's snapshot, on a connection of its own (both opened at once)."""
    production_conn, sandbox_conn = on_both(
        lambda: open_connection("production"), lambda: open_connection("sandbox")
    )
    workers = context.parallel_workers
    return (
        Snapshot(production_conn, context.production, workers),
        Snapshot(sandbox_conn, context.sandbox, workers),
    )


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
    sizing: tuple[int | None, int | None, int],
) -> Passes | str:
    """Begin both snapshots and settle how to hash and segment; or why the checksum cannot run.

    ``sizing`` is ``(segments, fine_segments, sparse_segments)`` of ``reconcile_checksum``.
    """
    segments, fine_segments, sparse = sizing
    key_columns = context.spec.key_columns
    production_facts, sandbox_facts = both(
        production, sandbox, lambda snapshot: snapshot.begin(key_columns)
    )
    agreed, reason = _why_not(production_facts, sandbox_facts, layout, hashing)
    if agreed is None:
        assert reason is not None
        return reason
    estimated_rows = max(production_facts.estimated_rows, sandbox_facts.estimated_rows)
    count = segments or segment_count(estimated_rows)
    fine_count = fine_segments or fine_segment_count(estimated_rows, count)
    if any(n & (n - 1) for n in (count, fine_count, sparse)) or fine_count > 1 << 30:
        raise ValueError("segment counts must be powers of two (segments are int4)")
    queries = {
        snapshot.side: side_queries(
            layout,
            snapshot.table,
            snapshot.side,
            agreed,
            context.production_filter if snapshot.side == "production" else None,
            addressable=facts.addressable,
        )
        for snapshot, facts in ((production, production_facts), (sandbox, sandbox_facts))
    }
    sample = None
    if segments is None and count > sparse:
        sample = DifferenceSample.of(queries, key_columns, context.sandbox, estimated_rows)
    return Passes(agreed, count, fine_count, queries, sample, sparse)


def _compare_differing(
    context: SyncContext,
    open_connection: ConnectionOpener,
    report: ReconcileReport,
    production: Snapshot,
    sandbox: Snapshot,
    differing: Differing,
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
    wanted = differing.wanted
    if (wanted is None or wanted) and not differing.nothing_to_read:
        production_rows = prefetch(_read_rows(production, differing))
        sandbox_rows = prefetch(_read_rows(sandbox, differing))
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


def _read_rows(snapshot: Snapshot, differing: Differing) -> Iterator[tuple[Any, ...]]:
    """The rows ``differing`` says to read on the snapshot's side: by ctid where it
    located them."""
    side = snapshot.side
    queries = differing.queries[side]
    if side in differing.locations:
        return snapshot.rows(queries.rows_at(differing.locations[side]), by_location=True)
    query = queries.rows(differing.mask, differing.wanted, differing.hashes.get(side))
    return snapshot.rows(query)
