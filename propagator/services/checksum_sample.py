"""How many rows differ, roughly, told by a sample: it sizes the segmented pass.

About 1,000 production rows (``TABLESAMPLE SYSTEM``: whole blocks, no scan) are
hashed, the sandbox rows with the same keys are found through its key index and
hashed the same way, and the sampled rows whose hash has no match estimate how
many rows differ. A few milliseconds a side, spent only once the whole tables
differ. Where few rows differ, fewer segments are grouped (``core.segments``);
the estimate never decides what is read, so a wrong one costs time, not answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.tables import TableInfo
from propagator.core.segments import sample_percent, segments_for_sample
from propagator.errors import Side
from propagator.services.checksum_queries import SideQueries
from propagator.services.checksum_snapshot import Snapshot

__all__ = ["DifferenceSample", "sampled_segments"]

# The share sampled comes from the planner's row estimate, which can be far behind a
# table that grew: the sample stops at five times the rows it aims at.
_SAMPLED_ROWS_MAX = 5000


@dataclass(frozen=True, slots=True)
class DifferenceSample:
    """The sample's two statements: production's sampled rows, the sandbox rows with their keys."""

    production: SideQueries
    sandbox: SideQueries
    key_columns: tuple[str, ...]
    sandbox_key_types: tuple[str, ...]  # as ``format_type`` spells them
    percent: float

    @classmethod
    def of(
        cls,
        queries: dict[Side, SideQueries],
        key_columns: Sequence[str],
        sandbox: TableInfo,
        estimated_rows: float,
    ) -> DifferenceSample:
        return cls(
            queries["production"],
            queries["sandbox"],
            tuple(key_columns),
            tuple(sandbox.columns[k].type_sql for k in key_columns),
            sample_percent(estimated_rows),
        )

    def sampled_rows(self) -> sql.Composed:
        """Production's sampled rows: their key values, then their row hash."""
        side = self.production
        sampled = sql.SQL("{} TABLESAMPLE SYSTEM ({}) REPEATABLE (0)").format(
            side.table, sql.Literal(self.percent)
        )
        return sql.SQL("SELECT {keys}, {row_hash} FROM {inner} LIMIT {limit}").format(
            keys=sql.SQL(", ").join(
                sql.SQL("s.{}").format(sql.Identifier(k)) for k in self.key_columns
            ),
            row_hash=side.row_hash,
            inner=side.inner(every_column=True, source=sampled),
            limit=sql.Literal(_SAMPLED_ROWS_MAX),
        )

    def matching_rows(self, keys: Sequence[Sequence[Any]]) -> sql.Composed:
        """The row hashes of the sandbox rows with these key values (found by its key index)."""
        side = self.sandbox
        arrays = [
            sql.SQL("{}::{}[]").format(sql.Literal([key[i] for key in keys]), sql.SQL(type_sql))
            for i, type_sql in enumerate(self.sandbox_key_types)
        ]
        with_keys = sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(
            sql.SQL(", ").join(map(sql.Identifier, self.key_columns)),
            sql.SQL(", ").join(arrays),
        )
        return sql.SQL("SELECT {} FROM {}").format(side.row_hash, side.inner(also=with_keys))


def sampled_segments(
    production: Snapshot,
    sandbox: Snapshot,
    sample: DifferenceSample,
    counts: tuple[int, int],
    rows: int,
) -> tuple[int, int, int]:
    """``(segments, rows sampled, of them differing)``: ``counts`` is ``(usual, sparse)``.

    A sample either server refuses (a type its keys cannot be sent as, say), or an
    empty one, leaves the usual count.
    """
    count, sparse = counts
    sampled = production.fetch_or_none(sample.sampled_rows())
    if not sampled:
        return count, 0, 0
    key_count = len(sample.key_columns)
    try:
        lookup = sample.matching_rows([row[:key_count] for row in sampled])
    except psycopg.Error:  # values the driver cannot send as one array
        return count, 0, 0
    matched = sandbox.fetch_or_none(lookup)
    if matched is None:
        return count, 0, 0
    found = {row[0] for row in matched}
    differing = sum(1 for row in sampled if row[key_count] not in found)
    return (
        segments_for_sample(count, sparse, rows, len(sampled), differing),
        len(sampled),
        differing,
    )
