"""Where two checksummed tables differ: the passes that narrow it down to rows.

Both whole tables first (one ungrouped pass, the cheap proof that nothing
differs); then per-segment digests; where differences are scattered over
many segments, either each row's hash in them or a finer pass; what is left
is the segments (and row hashes) whose rows ``checksum`` reads and compares.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from propagator.core.digests import (
    differing_segments,
    row_hashes,
    row_locations,
    rows_to_read,
)
from propagator.core.report import ReconcileReport
from propagator.errors import PermanentError, Side
from propagator.services.both_sides import on_both
from propagator.services.checksum_hashing import Hashing
from propagator.services.checksum_queries import SideQueries
from propagator.services.checksum_sample import DifferenceSample, sampled_segments
from propagator.services.checksum_snapshot import Snapshot
from propagator.services.context import ProgressCallback

__all__ = ["Differing", "Passes", "both", "event", "locate"]

_T = TypeVar("_T")

_READ_ALL_FRACTION = 0.5

_LOGGER = "propagator.services.checksum"  # the reconcile's events keep one logger name
_log = logging.getLogger(_LOGGER)


def event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A structured event when logging is configured; a plain standard-library record otherwise.

    structlog is only looked up, not imported: importing it costs a one-shot
    ``propagator reconcile`` ~70 ms at start, and where it was never imported
    nobody configured it.
    """
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        structlog.stdlib.get_logger(_LOGGER).log(level, event, **fields)
    else:
        _log.log(level, "%s %s", event, fields)


@dataclass(frozen=True, slots=True)
class Passes:
    """What both servers agreed on: the hashing, the segment counts, each side's statements;
    the sample that may group into ``sparse`` segments instead of ``count``."""

    hashing: Hashing
    count: int
    fine_count: int
    queries: dict[Side, SideQueries]
    sample: DifferenceSample | None = None
    sparse: int = 0


@dataclass(frozen=True, slots=True)
class Differing:
    """Where differences can be: each side's statements, its row total, the segments to read."""

    queries: dict[Side, SideQueries]
    totals: tuple[int, int]  # rows on each side, as the first pass counted them
    wanted: tuple[int, ...] | None  # the segments of ``mask`` to read; None: every row
    mask: int
    # Rows picked one by one, by ctid where a side can be read so, else by row hash.
    locations: dict[Side, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    hashes: dict[Side, tuple[int, ...]] = field(default_factory=dict)

    @property
    def nothing_to_read(self) -> bool:
        """Rows were picked one by one and none is left (only count hashes differed)."""
        picked = [*self.locations.values(), *self.hashes.values()]
        return bool(picked) and not any(picked)


def locate(
    report: ReconcileReport,
    production: Snapshot,
    sandbox: Snapshot,
    passes: Passes,
    progress: ProgressCallback | None,
    refining: tuple[float, int],
) -> Differing:
    """The checksum reconcile proper: compare both tables, then digests if they differ; say where.

    ``refining`` is ``(refine_above, hashed_rows_max)`` of ``reconcile_checksum``.
    """
    report.method = "checksum"
    report.fallback_reason = None
    report.started_at = report.started_at or datetime.now(UTC)
    queries = passes.queries
    whole = both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(queries[snapshot.side].whole_digest()),
    )
    event(
        "reconcile_tables_compared",
        hashing=passes.hashing,
        equal=whole[0] == whole[1],
        production_rows=whole[0][0],
        sandbox_rows=whole[1][0],
    )
    if progress is not None:
        progress(whole[0][0])
    if whole[0] == whole[1]:
        return Differing(queries, (whole[0][0], whole[1][0]), (), passes.count - 1)
    count = passes.count
    if passes.sample is not None:
        count = _sampled_count(production, sandbox, passes, passes.sample, whole[0][0])
    return _narrow(production, sandbox, passes, count, refining)


def _sampled_count(
    production: Snapshot, sandbox: Snapshot, passes: Passes, sample: DifferenceSample, rows: int
) -> int:
    """The segments to group into, as a sample of the rows says how many differ."""
    count, sampled, differing = sampled_segments(
        production, sandbox, sample, (passes.count, passes.sparse), rows
    )
    event(
        "reconcile_differences_sampled",
        sampled_rows=sampled,
        differing_rows=differing,
        segments=count,
    )
    return count


def _narrow(
    production: Snapshot,
    sandbox: Snapshot,
    passes: Passes,
    count: int,
    refining: tuple[float, int],
) -> Differing:
    """Digests per ``count`` segments; where they differ in many, row hashes or a finer pass."""
    fine_count, queries = passes.fine_count, passes.queries
    production_pass, sandbox_pass = both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(queries[snapshot.side].digests(count)),
    )
    totals = (production_pass[0], sandbox_pass[0])
    differing = _differing(production_pass, sandbox_pass)
    event(
        "reconcile_segments_compared",
        hashing=passes.hashing,
        segments=count,
        differing_segments=len(differing),
        production_rows=totals[0],
        sandbox_rows=totals[1],
    )
    wanted: tuple[int, ...] | None = differing
    mask = count - 1
    # Rows are spread evenly over segments (they are hash buckets).
    differing_share = len(differing) / count
    refine_above, hashed_rows_max = refining
    scattered = bool(differing) and differing_share > refine_above
    # Where both sides can be read by ctid, picking the rows by their hashes first
    # reads only the changed ones, even from a few segments: the same one scan.
    located = all(side_queries.location is not None for side_queries in queries.values())
    pick = scattered or (bool(differing) and located)
    if pick and differing_share * max(totals) <= hashed_rows_max:
        locations, hashes = _pick_rows(production, sandbox, queries, differing, mask)
        return Differing(queries, totals, differing, mask, locations, hashes)
    if scattered and fine_count > count:
        wanted = _refine(production, sandbox, queries, differing, count, fine_count)
        mask = fine_count - 1
        differing_share = len(wanted) / fine_count
    if wanted and differing_share > _READ_ALL_FRACTION:
        # Most rows are in differing segments: reading them all is cheaper than
        # hashing every row again to pick them out.
        wanted = None
    return Differing(queries, totals, wanted, mask)


def both(production: Snapshot, sandbox: Snapshot, run: Callable[[Snapshot], _T]) -> tuple[_T, _T]:
    """One pass on both servers at once."""
    return on_both(lambda: run(production), lambda: run(sandbox))


def _large_pass(
    production: Snapshot, sandbox: Snapshot, run: Callable[[Snapshot], _T]
) -> tuple[_T, _T]:
    """``both``, with the memory a finer pass's hash table or a row-hash pass's sort needs."""
    for snapshot in (production, sandbox):
        snapshot.allow_pass_memory()
    return both(production, sandbox, run)


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
    production_pass, sandbox_pass = _large_pass(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(
            queries[snapshot.side].finer_digests(count, differing, fine_count)
        ),
    )
    fine = _differing(production_pass, sandbox_pass)
    event(
        "reconcile_segments_refined",
        segments=fine_count,
        differing_segments=len(fine),
        production_rows=production_pass[0],
        sandbox_rows=sandbox_pass[0],
    )
    return fine


def _pick_rows(
    production: Snapshot,
    sandbox: Snapshot,
    queries: dict[Side, SideQueries],
    differing: tuple[int, ...],
    mask: int,
) -> tuple[dict[Side, tuple[tuple[int, int], ...]], dict[Side, tuple[int, ...]]]:
    """Each side's rows of the ``differing`` segments that are not equal on the other:
    their ctids where the side can be read by them, else their row hashes."""
    passes = _large_pass(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(queries[snapshot.side].row_hashes(mask, differing)),
    )
    located: dict[Side, tuple[tuple[int, int], ...]] = {}
    hashed: dict[Side, tuple[int, ...]] = {}
    try:
        picked = rows_to_read(passes[0][1], passes[1][1])
        for snapshot, (_, records, packed_locations), positions in zip(
            (production, sandbox), passes, picked, strict=True
        ):
            if packed_locations is not None:
                located[snapshot.side] = row_locations(packed_locations, positions)
            else:
                hashed[snapshot.side] = row_hashes(records, positions)
    except ValueError as error:
        raise PermanentError(
            f"checksum reconcile: {error}; set PROPAGATOR_RECONCILE_METHOD=stream"
        ) from None
    event(
        "reconcile_rows_hashed",
        production_rows=passes[0][0],
        sandbox_rows=passes[1][0],
        production_picked=len(picked[0]),
        sandbox_picked=len(picked[1]),
        by_location=sorted(located),
    )
    return located, hashed
