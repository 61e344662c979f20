"""Checksum layout planning and segment comparison, in memory."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.mapping import FieldMapping, MappingSpec
from propagator.core.segments import (
    MAX_FINE_SEGMENTS,
    MAX_SEGMENTS,
    PYTHON_WHITESPACE,
    CompareAs,
    NotExpressibleError,
    SqlTransform,
    ValueKind,
    compare_summaries,
    everything,
    fine_segment_count,
    plan_layout,
    refine,
    segment_count,
    value_kind,
    worth_refining,
)

JOBS = {"job": "integer", "release": "text", "fab_order": "numeric(12,2)", "stage": "text"}


def spec(*mappings: FieldMapping, keys: tuple[str, ...] = ("job", "release")) -> MappingSpec:
    return MappingSpec(keys, mappings)


def test_whitespace_set_is_exactly_what_str_strip_removes() -> None:
    """PYTHON_WHITESPACE lists every character str.isspace() accepts, and nothing else."""
    expected = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert expected == PYTHON_WHITESPACE
    assert (PYTHON_WHITESPACE + "x" + PYTHON_WHITESPACE).strip() == "x"


@pytest.mark.parametrize(
    ("type_sql", "kind"),
    [
        ("integer", ValueKind.INTEGER),
        ("bigint", ValueKind.INTEGER),
        ("numeric(12,2)", ValueKind.NUMERIC),
        ("double precision", ValueKind.DOUBLE),
        ("real", ValueKind.REAL),
        ("character varying(20)", ValueKind.TEXT),
        ("text", ValueKind.TEXT),
        ("uuid", ValueKind.UUID),
        ("boolean", ValueKind.BOOLEAN),
        ("character(5)", None),
        ("integer[]", None),
        ("timestamp with time zone", None),
        ("jsonb", None),
    ],
)
def test_value_kinds_from_catalog_types(type_sql: str, kind: ValueKind | None) -> None:
    """Column types map to comparison kinds; padded char and others are unsupported."""
    assert value_kind(type_sql) is kind


def test_number_pairs_compare_in_one_canonical_form() -> None:
    """int/int hash as int8, float/float as float8, any other number mix as exact numeric."""
    production = {**JOBS, "a": "integer", "b": "real", "c": "integer", "d": "text"}
    sandbox = {**JOBS, "a": "bigint", "b": "double precision", "c": "numeric", "d": "numeric"}
    layout = plan_layout(
        spec(*(FieldMapping(c, c) for c in "abcd")),
        production,
        sandbox,
    )
    assert [f.compare_as for f in layout.fields] == [
        CompareAs.INT8,
        CompareAs.FLOAT8,
        CompareAs.NUMERIC,
        CompareAs.DISTINCT,
    ]
    assert [k.compare_as for k in layout.keys] == [CompareAs.INT8, CompareAs.TEXT]
    assert layout.uses_float_text


@pytest.mark.parametrize(
    ("transform", "source_type", "expected", "result"),
    [
        ("float", "numeric", SqlTransform.TO_DOUBLE, ValueKind.DOUBLE),
        ("int", "numeric", SqlTransform.TRUNCATE, ValueKind.NUMERIC),
        ("int", "integer", SqlTransform.IDENTITY, ValueKind.INTEGER),
        ("decimal", "double precision", SqlTransform.IDENTITY, ValueKind.DOUBLE),
        ("text", "integer", SqlTransform.TO_TEXT, ValueKind.TEXT),
        ("strip", "text", SqlTransform.STRIP, ValueKind.TEXT),
        ("blank_to_null", "text", SqlTransform.BLANK_TO_NULL, ValueKind.TEXT),
        ("upper", "numeric", SqlTransform.IDENTITY, ValueKind.NUMERIC),
    ],
)
def test_named_transforms_with_exact_sql_forms(
    transform: str, source_type: str, expected: SqlTransform, result: ValueKind
) -> None:
    """Named transforms whose Python and SQL results agree exactly are planned in SQL."""
    layout = plan_layout(
        spec(FieldMapping("v", "v", transform)), {**JOBS, "v": source_type}, {**JOBS, "v": "text"}
    )
    assert (layout.fields[0].transform, layout.fields[0].production_result) == (expected, result)


@pytest.mark.parametrize(
    ("mapping", "types", "reason"),
    [
        (FieldMapping("stage", "stage", float), {}, "callable"),
        (FieldMapping("stage", "stage", "upper"), {}, "'upper' on a text column"),
        (FieldMapping("stage", "stage", "float"), {}, "'float' on a text column"),
        (FieldMapping("fab_order", "fab_order", "text"), {}, "'text' on a numeric column"),
        (FieldMapping("v", "v"), {"v": "timestamp"}, "has type timestamp"),
    ],
)
def test_what_cannot_be_checksummed_says_why(
    mapping: FieldMapping, types: dict[str, str], reason: str
) -> None:
    """Callables, case mapping, text parsing and unsupported types fall back with a reason."""
    with pytest.raises(NotExpressibleError, match=reason):
        plan_layout(spec(mapping), {**JOBS, **types}, {**JOBS, **types})


@pytest.mark.parametrize(
    ("production", "sandbox"),
    [("integer", "text"), ("double precision", "numeric"), ("real", "integer")],
)
def test_keys_of_incompatible_kinds_are_refused(production: str, sandbox: str) -> None:
    """Keys Python would match differently than the canonical forms make the run stream."""
    with pytest.raises(NotExpressibleError, match="key column 'job'"):
        plan_layout(
            spec(FieldMapping("fab_order", "fab_order")),
            {**JOBS, "job": production},
            {**JOBS, "job": sandbox},
        )


def test_integer_and_numeric_keys_compare_as_numeric() -> None:
    """1 and 1.00 are the same key in Python and in the canonical numeric form."""
    layout = plan_layout(
        spec(FieldMapping("fab_order", "fab_order")), JOBS, {**JOBS, "job": "numeric"}
    )
    assert layout.keys[0].compare_as is CompareAs.NUMERIC


@pytest.mark.parametrize(
    ("rows", "segments"),
    [(-1, MAX_SEGMENTS), (0, MAX_SEGMENTS), (10, 64), (5000, 512), (10_000_000, MAX_SEGMENTS)],
)
def test_segment_count_is_a_bounded_power_of_two(rows: float, segments: int) -> None:
    """Unknown sizes get the maximum; otherwise about 16 rows a segment, 64 to 8192."""
    assert segment_count(rows) == segments


def test_compare_summaries_counts_equal_and_differing_rows() -> None:
    """Equal summaries count as matched rows; one-sided or different segments are refetched."""
    production = [(1, 3, 10), (2, 2, 7), (3, 1, 5)]
    sandbox = [(1, 3, 10), (2, 2, 8), (4, 4, 9)]
    result = compare_summaries(production, sandbox)
    assert result.differing == (2, 3, 4)
    assert (result.production_rows, result.sandbox_rows, result.equal_rows) == (6, 9, 3)
    assert (result.differing_production_rows, result.differing_sandbox_rows) == (3, 6)


@pytest.mark.parametrize("production", [[(1, 3, 10), (1, 2, 7)], [(2, 3, 10), (1, 2, 7)]])
def test_summaries_out_of_order_are_an_error(production: list[tuple[int, int, int]]) -> None:
    """A segment named twice, or out of order, is a broken pass, never a quiet double count."""
    with pytest.raises(ValueError, match="production summaries are not in strictly ascending"):
        compare_summaries(production, [(1, 5, 17)])


def test_everything_reads_every_row() -> None:
    """When most rows sit in differing segments, all rows are read and none counted equal."""
    production = [(1, 3, 10), (2, 2, 7)]
    sandbox = [(1, 3, 10), (2, 2, 8)]
    result = everything(compare_summaries(production, sandbox))
    assert result.equal_rows == 0
    assert (result.differing_production_rows, result.differing_sandbox_rows) == (5, 5)


@pytest.mark.parametrize(
    ("rows", "coarse", "fine"),
    [
        (-1, MAX_SEGMENTS, MAX_FINE_SEGMENTS),
        (100, 64, 64),
        (1_000_000, MAX_SEGMENTS, 131_072),
        (10_000_000, MAX_SEGMENTS, MAX_FINE_SEGMENTS),
    ],
)
def test_fine_segment_count_is_a_bounded_power_of_two(rows: float, coarse: int, fine: int) -> None:
    """The finer pass aims at ~8 rows a segment, never coarser than the first pass, capped."""
    assert fine_segment_count(rows, coarse) == fine


def test_refining_pays_only_when_differing_segments_hold_many_rows() -> None:
    """A few differing segments are fetched directly; scattered differences get a finer pass."""
    production = [(s, 10, s) for s in range(10)]
    few = compare_summaries(production, [*production[:3], (3, 10, -1), *production[4:]])
    many = compare_summaries(production, [(s, 10, -s - 1) for s in range(10)])
    same = compare_summaries(production, production)
    assert not worth_refining(few)
    assert worth_refining(many)
    assert not worth_refining(same, 0.0)
    assert worth_refining(few, 0.0)


def test_refine_keeps_coarse_equal_rows_and_narrows_what_is_read() -> None:
    """Rows of equal coarse segments stay matched; only differing fine segments remain to read."""
    coarse = compare_summaries(
        [(0, 4, 1), (1, 5, 2)],
        [(0, 4, 1), (1, 4, 3)],
    )
    fine = refine(
        coarse,
        [(1, 2, 5), (3, 3, 6)],
        [(1, 2, 5), (3, 2, 7)],
    )
    assert fine.differing == (3,)
    assert (fine.production_rows, fine.sandbox_rows, fine.equal_rows) == (9, 8, 6)
    assert (fine.differing_production_rows, fine.differing_sandbox_rows) == (3, 2)


def test_refine_refuses_summaries_that_miss_rows() -> None:
    """A finer pass that does not account for every differing row is an error, not a guess."""
    coarse = compare_summaries([(1, 5, 2)], [(1, 4, 3)])
    with pytest.raises(ValueError, match="finer pass"):
        refine(coarse, [(1, 4, 5)], [(1, 4, 3)])


SUMMARY = st.tuples(st.integers(1, 3), st.integers(0, 3))


@given(st.dictionaries(st.integers(0, 40), SUMMARY), st.booleans(), st.data())
def test_compare_summaries_agrees_with_a_segment_by_segment_reference(
    production: dict[int, tuple[int, int]], same_segments: bool, data: st.DataObject
) -> None:
    """Same segments on both sides or not, the result is segment-by-segment comparison's."""
    if same_segments:
        sandbox = {segment: data.draw(SUMMARY) for segment in production}
    else:
        sandbox = data.draw(st.dictionaries(st.integers(0, 40), SUMMARY))

    def rows(side: dict[int, tuple[int, int]]) -> list[tuple[int, int, int]]:
        return [(segment, *side[segment]) for segment in sorted(side)]

    result = compare_summaries(rows(production), rows(sandbox))
    differing = sorted(
        s for s in production.keys() | sandbox.keys() if production.get(s) != sandbox.get(s)
    )
    assert result.differing == tuple(differing)
    assert result.production_rows == sum(n for n, _ in production.values())
    assert result.sandbox_rows == sum(n for n, _ in sandbox.values())
    assert result.differing_production_rows == sum(
        production[s][0] for s in differing if s in production
    )
    assert result.differing_sandbox_rows == sum(sandbox[s][0] for s in differing if s in sandbox)
    assert result.equal_rows == result.production_rows - result.differing_production_rows
