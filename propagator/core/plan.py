"""Planning: which sandbox fields must change, and the statistics of a run.

Both the full reconcile (a merge of two key-ordered streams) and the targeted
event path (rows read by key) end here, so "what differs" is decided in exactly
one place.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from propagator.core.mapping import FieldMapping, Key, MappingSpec, format_key
from propagator.core.typefit import FitCheck
from propagator.core.values import values_equal

__all__ = [
    "DuplicateKeyError",
    "FieldChange",
    "FitChecks",
    "JobMappingResult",
    "MappingStatistics",
    "MatchStatus",
    "RowFailure",
    "StreamOrderError",
    "merge_compare",
    "plan_against_lookup",
    "plan_row",
]


FitChecks = Sequence[FitCheck | None] | None
"""Per field mapping, whether the sandbox column can hold a new value (None: it always can)."""

_FAILURE_SAMPLE = 10_000  # failures kept by key; ``failed`` counts them all


class StreamOrderError(ValueError):
    """A key-ordered stream went backwards: the merge would give wrong answers."""


class DuplicateKeyError(ValueError):
    """Two rows on one side share a key, so the sandbox row to write is ambiguous."""

    def __init__(self, side: str, key: Key) -> None:
        super().__init__(
            f"duplicate key {format_key(key)} in the {side} table; key columns must be unique"
        )
        self.side = side
        self.key = key


class MatchStatus(enum.Enum):
    MATCHED = "matched"
    NOT_FOUND_IN_SANDBOX = "not_found_in_sandbox"
    NOT_FOUND_IN_PRODUCTION = "not_found_in_production"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One sandbox column that must take a new value."""

    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class JobMappingResult:
    """The outcome of mapping one key: matched or not, and the changes it needs."""

    key: Key
    status: MatchStatus
    changes: tuple[FieldChange, ...] = ()
    error: str | None = None  # a transform could not convert the value, or it does not fit
    misfits: tuple[FieldChange, ...] = ()  # new values the sandbox column cannot hold

    @property
    def matched(self) -> bool:
        return self.status is MatchStatus.MATCHED

    @property
    def needs_update(self) -> bool:
        return bool(self.changes)

    @property
    def label(self) -> str:
        return format_key(self.key)

    @property
    def job(self) -> Any:
        return self.key[0]

    @property
    def release(self) -> Any:
        return self.key[1] if len(self.key) > 1 else None

    def new_values(self) -> dict[str, Any]:
        return {change.field: change.new for change in self.changes}


@dataclass(frozen=True, slots=True)
class RowFailure:
    """A row that could not be applied; reported, never blocking the rest of its batch."""

    key: Key
    error: str
    kind: str = "rejected"  # "rejected" by the sandbox, or a "transform" that failed


@dataclass(slots=True)
class MappingStatistics:
    """Aggregate figures of one mapping run, as the seed's report shows them."""

    production_rows: int = 0
    sandbox_rows: int = 0
    matched: int = 0
    not_found_in_sandbox: int = 0
    not_found_in_production: int = 0
    differences: Counter[str] = field(default_factory=Counter)
    rows_with_differences: int = 0
    updated: int = 0
    failed: int = 0
    unfit: int = 0  # rows not written: a new value the sandbox column cannot hold
    busy: int = 0  # rows not written: another sandbox session held them (not a failure)
    duration_seconds: float = 0.0
    failures: list[RowFailure] = field(default_factory=list)
    busy_keys: list[Key] = field(default_factory=list)  # the busy rows, to retry them later

    def fail(self, failure: RowFailure) -> None:
        """Count a row not applied; the first ``_FAILURE_SAMPLE`` are kept by key."""
        self.failed += 1
        if len(self.failures) < _FAILURE_SAMPLE:
            self.failures.append(failure)

    def record(self, result: JobMappingResult) -> None:
        if result.misfits:
            self.unfit += 1
            self.fail(RowFailure(result.key, result.error or "", "unfit"))
        elif result.error is not None:
            self.fail(RowFailure(result.key, result.error, "transform"))
        if result.status is MatchStatus.MATCHED:
            self.matched += 1
            if result.changes:
                self.rows_with_differences += 1
                self.differences.update(change.field for change in result.changes)
        elif result.status is MatchStatus.NOT_FOUND_IN_SANDBOX:
            self.not_found_in_sandbox += 1
        else:
            self.not_found_in_production += 1

    @property
    def total_differences(self) -> int:
        return sum(self.differences.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "production_rows": self.production_rows,
            "sandbox_rows": self.sandbox_rows,
            "matched": self.matched,
            "not_found_in_sandbox": self.not_found_in_sandbox,
            "not_found_in_production": self.not_found_in_production,
            "rows_with_differences": self.rows_with_differences,
            "differences": dict(self.differences),
            "updated": self.updated,
            "failed": self.failed,
            "unfit": self.unfit,
            "busy": self.busy,
            "duration_seconds": round(self.duration_seconds, 6),
        }


def plan_row(
    key: Key,
    production_values: Sequence[Any],
    sandbox_values: Sequence[Any],
    field_mappings: Sequence[FieldMapping],
    checks: FitChecks = None,
) -> JobMappingResult:
    """Compare one matched row; values are given in mapping order on both sides.

    A transform that cannot convert a production value (``'abc'`` to decimal)
    makes this one row a failure to report, never the whole run; so does a new
    value its sandbox column cannot hold (``checks``, from ``core.typefit``):
    such a row is not written at all, so it is never half-written.
    """
    changes: list[FieldChange] = []
    misfits: list[tuple[FieldChange, str]] = []
    fit_checks = checks or (None,) * len(field_mappings)
    for mapping, raw, old, fits in zip(
        field_mappings, production_values, sandbox_values, fit_checks, strict=True
    ):
        try:
            new = mapping.apply(raw)
        except Exception as error:  # any user or named transform may raise anything
            reason = f"transform {mapping.transform_name} cannot convert {mapping.source} {raw!r}"
            return JobMappingResult(key, MatchStatus.MATCHED, (), f"{reason}: {error}")
        if not values_equal(new, old):
            if fits is None or fits(new):
                changes.append(FieldChange(mapping.target, old, new))
            else:
                misfits.append((FieldChange(mapping.target, old, new), fits.target.sql))
    if misfits:
        reason = "; ".join(f"{m.field} {m.new} does not fit {kind}" for m, kind in misfits)
        return JobMappingResult(key, MatchStatus.MATCHED, (), reason, tuple(m for m, _ in misfits))
    return JobMappingResult(key, MatchStatus.MATCHED, tuple(changes))


def _checked(rows: Iterable[Sequence[Any]], width: int, side: str) -> Iterator[tuple[Key, Any]]:
    previous: Key | None = None
    for row in rows:
        key = tuple(row[:width])
        if previous is not None:
            if key == previous:
                raise DuplicateKeyError(side, key)
            if key < previous:
                raise StreamOrderError(
                    f"{side} rows arrived out of key order ({format_key(previous)} then "
                    f"{format_key(key)}); key columns need a collation-independent order"
                )
        previous = key
        yield key, row[width:]


def merge_compare(
    production_rows: Iterable[Sequence[Any]],
    sandbox_rows: Iterable[Sequence[Any]],
    spec: MappingSpec,
    statistics: MappingStatistics,
    checks: FitChecks = None,
) -> Iterator[JobMappingResult]:
    """Merge two key-ordered streams and yield every key that is not simply in sync.

    Production rows are ``(*key, *source_values)`` with one value per field
    mapping; sandbox rows are ``(*key, *target_values)``. Memory stays constant:
    only the current row of each side is held.
    """
    width = len(spec.key_columns)
    mappings = spec.field_mappings
    production = _checked(production_rows, width, "production")
    sandbox = _checked(sandbox_rows, width, "sandbox")
    prod_item = next(production, None)
    sand_item = next(sandbox, None)
    while prod_item is not None or sand_item is not None:
        if sand_item is None or (prod_item is not None and prod_item[0] < sand_item[0]):
            assert prod_item is not None
            statistics.production_rows += 1
            result = JobMappingResult(prod_item[0], MatchStatus.NOT_FOUND_IN_SANDBOX)
            prod_item = next(production, None)
        elif prod_item is None or sand_item[0] < prod_item[0]:
            statistics.sandbox_rows += 1
            result = JobMappingResult(sand_item[0], MatchStatus.NOT_FOUND_IN_PRODUCTION)
            sand_item = next(sandbox, None)
        else:
            statistics.production_rows += 1
            statistics.sandbox_rows += 1
            result = plan_row(prod_item[0], prod_item[1], sand_item[1], mappings, checks)
            prod_item = next(production, None)
            sand_item = next(sandbox, None)
        statistics.record(result)
        if result.status is not MatchStatus.MATCHED or result.changes or result.error:
            yield result


def plan_against_lookup(
    production_rows: Iterable[Sequence[Any]],
    sandbox_lookup: Mapping[Key, Sequence[Any]],
    spec: MappingSpec,
    statistics: MappingStatistics,
    checks: FitChecks = None,
) -> Iterator[JobMappingResult]:
    """Plan rows read by key (the event path, the seed API) against a sandbox lookup."""
    width = len(spec.key_columns)
    for row in production_rows:
        key = tuple(row[:width])
        statistics.production_rows += 1
        found = sandbox_lookup.get(key)
        if found is None:
            result = JobMappingResult(key, MatchStatus.NOT_FOUND_IN_SANDBOX)
        else:
            result = plan_row(key, row[width:], found, spec.field_mappings, checks)
        statistics.record(result)
        yield result
