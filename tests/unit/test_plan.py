"""Planning: the merge of two key-ordered streams, the lookup path, and their statistics.

The properties compare the streaming merge with a plain dictionary oracle over
generated tables: composite keys of one to three int/text columns, NULLs, and
several field mappings with transforms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from propagator.core.mapping import FieldMapping, Key, MappingSpec
from propagator.core.plan import (
    DuplicateKeyError,
    FieldChange,
    JobMappingResult,
    MappingStatistics,
    MatchStatus,
    RowFailure,
    StreamOrderError,
    merge_compare,
    plan_against_lookup,
    plan_row,
)

Row = tuple[Any, ...]
Outcome = tuple[Key, MatchStatus, tuple[tuple[str, Any, Any], ...]]

# --- generated tables -----------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-10_000, max_value=10_000),
    st.decimals(min_value=-10_000, max_value=10_000, places=2, allow_nan=False),
)
texts = st.text(alphabet=st.sampled_from(list("aAbB éÉ日本\u00a0 ")), max_size=4)

# Each kind: the values a production column holds, and the transforms that fit them.
NUMERIC_TRANSFORMS: list[Any] = [None, "float", "decimal", "int", "text", float]
TEXT_TRANSFORMS: list[Any] = [None, "strip", "upper", "lower", "blank_to_null", "text"]


@dataclass(frozen=True)
class Column:
    """One mapped column: its transform and how to draw its raw production values."""

    mapping: FieldMapping
    values: st.SearchStrategy[Any]


@st.composite
def columns(draw: st.DrawFn, index: int) -> Column:
    numeric = draw(st.booleans())
    transforms = NUMERIC_TRANSFORMS if numeric else TEXT_TRANSFORMS
    transform = draw(st.sampled_from(transforms))
    source = draw(st.sampled_from(["fab_order", "paint_color", "stage", f"source_{index}"]))
    mapping = FieldMapping(source, f"target_{index}", transform)
    return Column(mapping, st.none() | (numbers if numeric else texts))


key_parts: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(min_value=-5, max_value=5),
    "text": st.text(alphabet=st.sampled_from(list("AaBb-é日\U0001f600")), max_size=2),
}


@dataclass(frozen=True)
class Tables:
    """A mapping spec and both sides as key-sorted row lists."""

    spec: MappingSpec
    production: list[Row]
    sandbox: list[Row]


def respell(value: Any) -> Any:
    """The same value as a driver for a differently typed sandbox column might return it."""
    if isinstance(value, float):
        return Decimal(repr(value)) + Decimal("0.00")  # a double read back from numeric
    if isinstance(value, int):
        return Decimal(value).quantize(Decimal("0.01"))
    if isinstance(value, Decimal) and value.is_finite():
        return value.quantize(Decimal("0.0001"))
    return value


@st.composite
def tables(draw: st.DrawFn) -> Tables:
    key_types = draw(st.lists(st.sampled_from(sorted(key_parts)), min_size=1, max_size=3))
    key_columns = tuple(f"key_{i}" for i in range(len(key_types)))
    cols = [draw(columns(i)) for i in range(draw(st.integers(min_value=1, max_value=4)))]
    spec = MappingSpec(key_columns, tuple(c.mapping for c in cols))
    key_strategy = st.tuples(*(key_parts[kind] for kind in key_types))
    keys = draw(st.lists(key_strategy, unique=True, max_size=25))
    production: list[Row] = []
    sandbox: list[Row] = []
    for key in sorted(keys):
        where = draw(st.sampled_from(["both", "both", "both", "production", "sandbox"]))
        raw = tuple(draw(c.values) for c in cols)
        if where in ("both", "production"):
            production.append((*key, *raw))
        if where in ("both", "sandbox"):
            held: list[Any] = []
            for column, value in zip(cols, raw, strict=True):
                choice = draw(st.sampled_from(["synced", "respelled", "other"]))
                converged = column.mapping.apply(value)
                if choice == "synced":
                    held.append(converged)
                elif choice == "respelled":
                    held.append(respell(converged))
                else:
                    held.append(draw(column.values))
            sandbox.append((*key, *held))
    return Tables(spec, production, sandbox)


# --- the oracle -----------------------------------------------------------------------------


def same(left: Any, right: Any) -> bool:
    """Equality for the generated domain, written independently of values_equal."""
    if left is None or right is None:
        return left is None and right is None
    numeric = (int, float, Decimal)
    if isinstance(left, numeric) and isinstance(right, numeric):
        return Decimal(repr(left) if isinstance(left, float) else left) == Decimal(
            repr(right) if isinstance(right, float) else right
        )
    return type(left) is type(right) and left == right


def split(rows: Sequence[Row], width: int) -> dict[Key, Row]:
    return {tuple(row[:width]): tuple(row[width:]) for row in rows}


def oracle(tables: Tables) -> tuple[list[Outcome], dict[str, Any]]:
    """Every key that is not in sync, in key order, and the exact statistics."""
    width = len(tables.spec.key_columns)
    production = split(tables.production, width)
    sandbox = split(tables.sandbox, width)
    outcomes: list[Outcome] = []
    differences: Counter[str] = Counter()
    rows_with_differences = 0
    for key in sorted(production.keys() | sandbox.keys()):
        if key not in sandbox:
            outcomes.append((key, MatchStatus.NOT_FOUND_IN_SANDBOX, ()))
        elif key not in production:
            outcomes.append((key, MatchStatus.NOT_FOUND_IN_PRODUCTION, ()))
        else:
            changes = tuple(
                (m.target, old, m.apply(raw))
                for m, raw, old in zip(
                    tables.spec.field_mappings, production[key], sandbox[key], strict=True
                )
                if not same(m.apply(raw), old)
            )
            if changes:
                rows_with_differences += 1
                differences.update(target for target, _, _ in changes)
                outcomes.append((key, MatchStatus.MATCHED, changes))
    figures = {
        "production_rows": len(production),
        "sandbox_rows": len(sandbox),
        "matched": len(production.keys() & sandbox.keys()),
        "not_found_in_sandbox": len(production.keys() - sandbox.keys()),
        "not_found_in_production": len(sandbox.keys() - production.keys()),
        "rows_with_differences": rows_with_differences,
        "differences": dict(differences),
    }
    return outcomes, figures


def as_outcomes(results: Sequence[JobMappingResult]) -> list[Outcome]:
    return [(r.key, r.status, tuple((c.field, c.old, c.new) for c in r.changes)) for r in results]


def figures_of(statistics: MappingStatistics) -> dict[str, Any]:
    shown = statistics.to_dict()
    return {
        name: shown[name]
        for name in (
            "production_rows",
            "sandbox_rows",
            "matched",
            "not_found_in_sandbox",
            "not_found_in_production",
            "rows_with_differences",
            "differences",
        )
    }


def converge(tables: Tables, results: Sequence[JobMappingResult]) -> list[Row]:
    """The sandbox after writing every planned change (what the applier does)."""
    width = len(tables.spec.key_columns)
    targets = list(tables.spec.target_columns)
    planned = {r.key: r.new_values() for r in results if r.matched}
    converged = []
    for row in tables.sandbox:
        key, values = tuple(row[:width]), list(row[width:])
        for target, value in planned.get(key, {}).items():
            values[targets.index(target)] = value
        converged.append((*key, *values))
    return converged


# --- properties -----------------------------------------------------------------------------


@given(tables())
def test_merge_plan_equals_the_dictionary_oracle(generated: Tables) -> None:
    """The streaming merge yields exactly the oracle's out-of-sync keys, in key order."""
    statistics = MappingStatistics()
    results = list(
        merge_compare(
            iter(generated.production), iter(generated.sandbox), generated.spec, statistics
        )
    )
    expected, _ = oracle(generated)
    assert as_outcomes(results) == expected


@given(tables())
def test_merge_statistics_are_exact(generated: Tables) -> None:
    """Row counts, matches, misses and per-field differences equal the oracle's figures."""
    statistics = MappingStatistics()
    for _ in merge_compare(generated.production, generated.sandbox, generated.spec, statistics):
        pass
    _, expected = oracle(generated)
    assert figures_of(statistics) == expected
    assert statistics.total_differences == sum(expected["differences"].values())


@given(tables())
def test_replanning_after_applying_the_plan_finds_nothing(generated: Tables) -> None:
    """Writing the planned values converges the sandbox: a second plan has no changes."""
    first = list(
        merge_compare(generated.production, generated.sandbox, generated.spec, MappingStatistics())
    )
    statistics = MappingStatistics()
    second = list(
        merge_compare(generated.production, converge(generated, first), generated.spec, statistics)
    )
    assert statistics.rows_with_differences == 0
    assert not statistics.differences
    assert all(not result.changes for result in second)
    assert [r.key for r in second] == [r.key for r in first if not r.matched]


@settings(max_examples=40)  # a simple rule: fewer examples suffice
@given(tables())
def test_planning_is_idempotent(generated: Tables) -> None:
    """Planning the same input twice gives the same plan and the same figures."""
    runs = []
    for _ in range(2):
        statistics = MappingStatistics()
        results = list(
            merge_compare(generated.production, generated.sandbox, generated.spec, statistics)
        )
        runs.append((as_outcomes(results), statistics.to_dict()))
    assert runs[0] == runs[1]


@given(tables(), st.randoms(use_true_random=False))
def test_lookup_plan_agrees_with_the_merge(generated: Tables, random: Any) -> None:
    """Planning rows read by key against a lookup gives the merge's answer for each key."""
    width = len(generated.spec.key_columns)
    production = list(generated.production)
    random.shuffle(production)  # the event path reads keys in any order
    lookup = split(generated.sandbox, width)
    statistics = MappingStatistics()
    results = list(plan_against_lookup(production, lookup, generated.spec, statistics))

    assert [r.key for r in results] == [tuple(row[:width]) for row in production]
    expected, _ = oracle(generated)
    expected_by_key = {key: (status, changes) for key, status, changes in expected}
    for outcome in as_outcomes(results):
        key, status, changes = outcome
        if status is MatchStatus.MATCHED and not changes:
            assert key not in expected_by_key  # in sync: the merge does not yield it either
        else:
            assert expected_by_key[key] == (status, changes)

    sandbox_keys = set(lookup)
    production_keys = {tuple(row[:width]) for row in production}
    assert statistics.production_rows == len(production)
    assert statistics.sandbox_rows == 0
    assert statistics.matched == len(production_keys & sandbox_keys)
    assert statistics.not_found_in_sandbox == len(production_keys - sandbox_keys)
    assert statistics.not_found_in_production == 0


@settings(max_examples=40)  # a simple rule: fewer examples suffice
@given(tables(), st.data())
def test_out_of_order_input_raises(generated: Tables, data: st.DataObject) -> None:
    """A stream that goes backwards raises StreamOrderError naming the side."""
    side = data.draw(st.sampled_from(["production", "sandbox"]))
    rows = list(getattr(generated, side))
    assume(len(rows) >= 2)
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 2))
    rows[index], rows[index + 1] = rows[index + 1], rows[index]
    streams = {"production": generated.production, "sandbox": generated.sandbox, side: rows}
    with pytest.raises(StreamOrderError, match=f"{side} rows arrived out of key order"):
        list(
            merge_compare(
                streams["production"], streams["sandbox"], generated.spec, MappingStatistics()
            )
        )


@settings(max_examples=40)  # a simple rule: fewer examples suffice
@given(tables(), st.data())
def test_duplicate_keys_raise_naming_the_side(generated: Tables, data: st.DataObject) -> None:
    """Two rows with one key on a side raise DuplicateKeyError naming that side and key."""
    side = data.draw(st.sampled_from(["production", "sandbox"]))
    rows = list(getattr(generated, side))
    assume(rows)
    index = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    rows.insert(index, rows[index])
    streams = {"production": generated.production, "sandbox": generated.sandbox, side: rows}
    with pytest.raises(DuplicateKeyError, match=f"in the {side} table") as caught:
        list(
            merge_compare(
                streams["production"], streams["sandbox"], generated.spec, MappingStatistics()
            )
        )
    width = len(generated.spec.key_columns)
    assert caught.value.side == side
    assert caught.value.key == tuple(rows[index][:width])


# --- examples -------------------------------------------------------------------------------

FAB_ORDER = FieldMapping("fab_order", "fab_order")
SPEC = MappingSpec(("job", "release"), (FAB_ORDER, FieldMapping("paint_color", "paint_color")))


@pytest.mark.parametrize(
    ("production", "sandbox"),
    [
        (500, Decimal("500.00")),
        (Decimal("500.0"), 500.0),
        (None, None),
        ("Red", "Red"),
    ],
)
def test_plan_row_sees_no_change_for_equal_values(production: Any, sandbox: Any) -> None:
    """Equal values (in any numeric spelling, NULL included) need no write."""
    result = plan_row((1, "A"), [production], [sandbox], [FAB_ORDER])
    assert result.matched
    assert not result.needs_update
    assert result.changes == ()


@pytest.mark.parametrize(
    ("production", "sandbox"),
    [(510, Decimal("500.00")), (None, Decimal("500.00")), (Decimal("500.00"), None)],
)
def test_plan_row_reports_real_changes(production: Any, sandbox: Any) -> None:
    """A different value, or NULL on one side only, is a change from old to new."""
    result = plan_row((1, "A"), [production], [sandbox], [FAB_ORDER])
    assert result.changes == (FieldChange("fab_order", sandbox, production),)
    assert result.new_values() == {"fab_order": production}


def test_plan_row_applies_the_transform_before_comparing() -> None:
    """The transformed production value is compared and becomes the new value."""
    mappings = [FieldMapping("fab_order", "fab_order", float), FieldMapping("c", "c", "upper")]
    unchanged = plan_row((1, "A"), [Decimal("500.00"), "red"], [500, "RED"], mappings)
    assert unchanged.changes == ()
    changed = plan_row((1, "A"), [Decimal("510.00"), "blue"], [500, "RED"], mappings)
    assert changed.changes == (
        FieldChange("fab_order", 500, 510.0),
        FieldChange("c", "RED", "BLUE"),
    )
    assert isinstance(changed.changes[0].new, float)


def test_plan_row_refuses_mismatched_value_counts() -> None:
    """Values must line up with the mappings; a short row is an error, not a silent skip."""
    with pytest.raises(ValueError, match="zip"):
        plan_row((1,), [1, 2], [1], [FAB_ORDER, FieldMapping("b", "b")])


def test_job_mapping_result_labels_like_the_seed() -> None:
    """A result exposes the seed's job/release fields and its ``10001-A`` label."""
    result = JobMappingResult((10001, "A"), MatchStatus.MATCHED, (FieldChange("f", 1, 2),))
    assert (result.job, result.release, result.label) == (10001, "A", "10001-A")
    single = JobMappingResult((7,), MatchStatus.NOT_FOUND_IN_SANDBOX)
    assert (single.job, single.release, single.label) == (7, None, "7")
    assert not single.matched
    assert JobMappingResult((None, "B"), MatchStatus.MATCHED).label == "NULL-B"


def test_merge_example_with_every_outcome() -> None:
    """A small hand-written merge shows each outcome and its figures."""
    production = [(1, "A", 500, "red"), (2, "A", 600, None), (3, "B", 700, "blue")]
    sandbox = [(1, "A", Decimal("500.00"), "red"), (2, "A", 650, None), (4, "C", 1, "x")]
    statistics = MappingStatistics()
    results = list(merge_compare(production, sandbox, SPEC, statistics))
    assert [(r.key, r.status) for r in results] == [
        ((2, "A"), MatchStatus.MATCHED),
        ((3, "B"), MatchStatus.NOT_FOUND_IN_SANDBOX),
        ((4, "C"), MatchStatus.NOT_FOUND_IN_PRODUCTION),
    ]
    assert results[0].changes == (FieldChange("fab_order", 650, 600),)
    statistics.updated = 1
    statistics.failures.append(RowFailure((9, "Z"), "boom"))
    statistics.duration_seconds = 1.23456789
    assert statistics.to_dict() == {
        "production_rows": 3,
        "sandbox_rows": 3,
        "matched": 2,
        "not_found_in_sandbox": 1,
        "not_found_in_production": 1,
        "rows_with_differences": 1,
        "differences": {"fab_order": 1},
        "updated": 1,
        "failed": 0,
        "unfit": 0,
        "busy": 0,
        "duration_seconds": 1.234568,
    }


def test_merge_of_empty_streams_is_empty() -> None:
    """Two empty tables give no results and zero figures."""
    statistics = MappingStatistics()
    assert list(merge_compare([], [], SPEC, statistics)) == []
    assert statistics.production_rows == statistics.sandbox_rows == statistics.matched == 0


def test_merge_is_lazy_and_streams() -> None:
    """The merge pulls rows on demand, so it never needs a whole table in memory."""
    pulled: list[int] = []

    def production() -> Any:
        for job in range(1_000_000):
            pulled.append(job)
            yield (job, "A", job, None)

    results = merge_compare(production(), iter(()), SPEC, MappingStatistics())
    first = next(results)
    assert first.key == (0, "A")
    assert len(pulled) <= 2


def test_duplicate_key_error_message_names_the_key() -> None:
    """The duplicate-key message shows the seed label of the repeated key."""
    rows = [(1, "A", 1, None), (1, "A", 2, None)]
    with pytest.raises(DuplicateKeyError, match="duplicate key 1-A in the sandbox table"):
        list(merge_compare([], rows, SPEC, MappingStatistics()))


def test_out_of_order_message_names_both_keys() -> None:
    """The order error shows the two keys that went backwards."""
    rows = [(2, "A", 1, None), (1, "A", 2, None)]
    with pytest.raises(StreamOrderError, match=r"\(2-A then 1-A\)"):
        list(merge_compare(rows, [], SPEC, MappingStatistics()))


def test_a_value_the_transform_cannot_convert_fails_that_row_only() -> None:
    """A value a transform rejects ('abc' to decimal) is one reported failure, not a crash."""
    from propagator.core.mapping import FieldMapping, MappingSpec
    from propagator.core.plan import MappingStatistics, merge_compare

    spec = MappingSpec(("job",), (FieldMapping("fab_order", "fab_order", "decimal"),))
    statistics = MappingStatistics()
    production = [(1, "abc"), (2, "7.5")]
    sandbox = [(1, None), (2, None)]
    results = list(merge_compare(production, sandbox, spec, statistics))
    assert [r.key for r in results] == [(1,), (2,)]
    assert results[0].error is not None
    assert "decimal" in results[0].error
    assert results[0].changes == ()
    assert statistics.failed == 1
    assert statistics.failures[0].key == (1,)
    assert statistics.failures[0].kind == "transform"
    assert statistics.rows_with_differences == 1
