"""Checksum layout planning and segment comparison, in memory."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.digests import (
    compare_digests,
    differing_segments,
    row_hashes,
    row_locations,
    rows_to_read,
)
from propagator.core.mapping import FieldMapping, MappingSpec
from propagator.core.segments import (
    MAX_FINE_SEGMENTS,
    MAX_SEGMENTS,
    PYTHON_WHITESPACE,
    CompareAs,
    NotExpressibleError,
    SqlTransform,
    ValueKind,
    fine_segment_count,
    plan_layout,
    sample_percent,
    segment_count,
    segments_for_sample,
    value_kind,
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


@pytest.mark.parametrize(
    ("production", "sandbox", "transform", "finite"),
    [
        ("numeric(12,2)", "numeric(14,4)", None, True),
        ("integer", "numeric(9)", None, True),
        ("numeric(12,2)", "numeric", None, False),  # a bare numeric can hold Infinity
        ("numeric", "numeric(12,2)", None, False),
        ("numeric(12,2)", "double precision", None, False),
        ("numeric(12,2)", "numeric(14,4)", "int", True),  # truncating keeps it finite
        ("numeric(12,2)", "numeric(14,4)", "float", False),  # a double can overflow
    ],
)
def test_only_columns_that_cannot_hold_infinity_are_finite(
    production: str, sandbox: str, transform: str | None, finite: bool
) -> None:
    """NaN's own test is left out only where neither side can hold an infinity."""
    layout = plan_layout(
        spec(FieldMapping("v", "v", transform)), {**JOBS, "v": production}, {**JOBS, "v": sandbox}
    )
    assert layout.fields[0].finite is finite
    assert [k.finite for k in layout.keys] == [True, False]  # integer job, text release


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


@pytest.mark.parametrize(
    ("rows", "coarse", "fine"),
    [
        (-1, MAX_SEGMENTS, MAX_FINE_SEGMENTS),
        (100, 64, 64),
        (1_000_000, MAX_SEGMENTS, MAX_FINE_SEGMENTS),
        (100_000, 8192, 32_768),
        (10_000_000, MAX_SEGMENTS, MAX_FINE_SEGMENTS),
    ],
)
def test_fine_segment_count_is_a_bounded_power_of_two(rows: float, coarse: int, fine: int) -> None:
    """The finer pass aims at ~4 rows a segment, never coarser than the first pass, capped."""
    assert fine_segment_count(rows, coarse) == fine


@pytest.mark.parametrize(
    ("rows", "percent"), [(-1, 100.0), (0, 100.0), (1000, 100.0), (4000, 25.0), (1e6, 0.1)]
)
def test_a_sample_holds_about_a_thousand_rows(rows: float, percent: float) -> None:
    assert sample_percent(rows) == pytest.approx(percent)


@pytest.mark.parametrize(
    ("sampled", "differing", "segments"),
    [
        (1000, 0, 8192),  # none seen: at most ~1,000 of 1M differ
        (1000, 1, 8192),  # ~2,000 at most: a quarter of the sparse segments
        (1000, 2, 32768),
        (1000, 10, 32768),  # 1% of the rows
        (0, 0, 32768),  # no sample: the usual count
    ],
)
def test_a_sample_of_few_differences_groups_into_fewer_segments(
    sampled: int, differing: int, segments: int
) -> None:
    assert segments_for_sample(32768, 8192, 1_000_000, sampled, differing) == segments


def test_a_table_already_in_few_segments_keeps_its_count() -> None:
    assert segments_for_sample(4096, 8192, 60_000, 2000, 0) == 4096


def _packed(*digests: int) -> bytes:
    return b"".join(d.to_bytes(8, "big", signed=True) for d in digests)


def test_compare_digests_names_the_segments_whose_digests_differ() -> None:
    """Segment i is the i-th 8-byte digest; equal digests are equal segments."""
    assert compare_digests(_packed(1, 2, 3, -4), _packed(1, 2, 3, -4)) == ()
    assert compare_digests(_packed(1, 2, 3, -4), _packed(1, 0, 3, 4)) == (1, 3)
    assert compare_digests(b"", b"") == ()


@pytest.mark.parametrize(
    ("production", "sandbox"), [(_packed(1, 2), _packed(1)), (b"1234567", b"1234567")]
)
def test_compare_digests_refuses_misaligned_input(production: bytes, sandbox: bytes) -> None:
    """Packed digests of different lengths, or not whole digests, are a broken pass."""
    with pytest.raises(ValueError, match="8-byte digest"):
        compare_digests(production, sandbox)


@given(
    st.dictionaries(st.integers(0, 300), st.integers(-(2**63), 2**63 - 1), max_size=40),
    st.dictionaries(st.integers(0, 300), st.integers(-(2**63), 2**63 - 1), max_size=40),
    st.data(),
)
def test_differing_segments_are_those_whose_digests_differ_or_that_one_side_lacks(
    production: dict[int, int], sandbox: dict[int, int], data: st.DataObject
) -> None:
    """Sparse passes (segment numbers sent) compare segment by segment; a segment with rows
    on one side only differs; shared equal digests never do."""
    shared = (
        data.draw(st.lists(st.sampled_from(sorted(production)), unique=True)) if production else []
    )
    for segment in shared:
        sandbox[segment] = production[segment]

    def packed(digests: dict[int, int]) -> tuple[bytes, bytes]:
        segments = sorted(digests)
        return (
            b"".join(digests[s].to_bytes(8, "big", signed=True) for s in segments),
            b"".join(s.to_bytes(4, "big", signed=True) for s in segments),
        )

    expected = tuple(
        sorted(s for s in production.keys() | sandbox.keys() if production.get(s) != sandbox.get(s))
    )
    found = differing_segments(*packed(production), *packed(sandbox))
    assert found == expected


def test_differing_segments_mixes_a_dense_pass_with_a_sparse_one() -> None:
    """A side with rows in every segment sends no numbers; the other's empty segments differ."""
    dense = _packed(5, 6, 7)
    sparse_digests = _packed(5, 7)
    sparse_ids = (0).to_bytes(4, "big") + (2).to_bytes(4, "big")
    assert differing_segments(dense, None, sparse_digests, sparse_ids) == (1,)
    assert differing_segments(dense, None, dense, None) == ()
    assert differing_segments(b"", b"", dense, None) == (0, 1, 2)
    with pytest.raises(ValueError, match="8-byte digest"):
        differing_segments(dense, b"\x00", dense, None)


def _packed(*hashes: int) -> bytes:
    return b"".join(h.to_bytes(8, "big", signed=True) for h in hashes)


def _records(rows: dict[int, int]) -> bytes:
    """(key hash, row hash) records sorted as the server sends them."""
    return _packed(*(value for key in sorted(rows) for value in (key, rows[key])))


def test_rows_to_read_with_the_same_keys_are_the_changed_ones_at_their_positions() -> None:
    production = {-(2**63): 1, -5: 2, 0: 3, 7: 4, 2**63 - 1: 5}
    sandbox = {**production, -5: 20, 2**63 - 1: 50}
    assert rows_to_read(_records(production), _records(sandbox)) == ([1, 4], [1, 4])
    assert rows_to_read(_records(production), _records(production)) == ([], [])


def test_rows_to_read_with_missing_and_extra_keys() -> None:
    production = {1: 10, 2: 20, 3: 30, 5: 50, 8: 80}
    sandbox = {0: 0, 2: 20, 3: 31, 4: 40, 5: 50, 9: 90}
    # production: 1 missing in the sandbox, 3 changed, 8 missing; sandbox: 0, 4, 9 extra, 3
    assert rows_to_read(_records(production), _records(sandbox)) == ([0, 2, 4], [0, 2, 3, 5])
    assert rows_to_read(b"", _records(sandbox)) == ([], [0, 1, 2, 3, 4, 5])


@given(
    st.dictionaries(st.integers(-50, 50), st.integers(0, 3), max_size=60),
    st.dictionaries(st.integers(-50, 50), st.integers(0, 3), max_size=60),
    st.sets(st.integers(-50, 50), max_size=60),
)
def test_rows_to_read_skips_exactly_the_rows_equal_on_both_sides(
    production: dict[int, int], changes: dict[int, int], drop: set[int]
) -> None:
    """Every row not equal on the other side is read, and no row that is."""
    sandbox = {k: v for k, v in {**production, **changes}.items() if k not in drop}
    read = rows_to_read(_records(production), _records(sandbox))
    for side, rows, other in ((0, production, sandbox), (1, sandbox, production)):
        keys = sorted(rows)
        assert {keys[p] for p in read[side]} == {k for k in rows if other.get(k) != rows[k]}


def test_rows_to_read_refuses_a_torn_record() -> None:
    with pytest.raises(ValueError, match="not 16 a row"):
        rows_to_read(_packed(1, 2) + b"\x00", _packed(1, 2))


def test_row_hashes_are_the_second_half_of_each_record() -> None:
    assert row_hashes(_records({1: 10, 2: -20, 3: 30}), [2, 1]) == (30, -20)


def test_row_locations_decode_tidsend_values() -> None:
    """tidsend is a 4-byte block number and a 2-byte offset, big-endian."""
    packed = bytes.fromhex("0000000000010001e24000ffffffffffffff")
    assert row_locations(packed, [2, 0]) == ((4294967295, 65535), (0, 1))
    assert row_locations(packed, [1]) == ((123456, 255),)
    with pytest.raises(ValueError, match="not 6 a row"):
        row_locations(packed[:-1], [0])
