"""Type compatibility: which mappings fit, narrow or can never be stored, and ``fits``."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from propagator.core.mapping import FieldMapping
from propagator.core.plan import MappingStatistics, MatchStatus, plan_row
from propagator.core.report import ReconcileReport, render_json, render_text
from propagator.core.typefit import Family, Verdict, decide, fits, parse_type


def verdict(source: str, target: str, transform: str | None = None) -> Verdict:
    return decide(parse_type(source), parse_type(target), transform).verdict


@pytest.mark.parametrize(
    ("type_sql", "family", "size", "scale"),
    [
        ("numeric(12,2)", Family.NUMERIC, 12, 2),
        ("numeric", Family.NUMERIC, None, 0),
        ("character varying(3)", Family.TEXT, 3, 0),
        ("character(5)", Family.TEXT, 5, 0),
        ("text", Family.TEXT, None, 0),
        ("bigint", Family.INTEGER, 64, 0),
        ("smallint", Family.INTEGER, 16, 0),
        ("double precision", Family.FLOAT, 64, 0),
        ("timestamp(3) with time zone", Family.DATETIME, None, 0),
        ("character varying(3)[]", Family.OTHER, None, 0),
        ("my_domain", Family.OTHER, None, 0),
    ],
)
def test_declared_types_are_read_from_format_type(
    type_sql: str, family: Family, size: int | None, scale: int
) -> None:
    """format_type text gives the family, length or precision and scale; unknown is OTHER."""
    parsed = parse_type(type_sql)
    assert (parsed.family, parsed.size, parsed.scale) == (family, size, scale)


@pytest.mark.parametrize(
    ("source", "target", "transform"),
    [
        ("numeric(12,2)", "numeric(12,2)", None),
        ("numeric(12,2)", "numeric(14,4)", None),
        ("numeric(12,2)", "numeric", None),
        ("integer", "bigint", None),
        ("smallint", "numeric(5,0)", None),
        ("numeric(9,0)", "integer", None),
        ("bigint", "double precision", None),
        ("character varying(3)", "text", None),
        ("character varying(3)", "character varying(5)", "upper"),
        ("text", "text", "strip"),
        ("numeric(12,2)", "text", None),
        ("timestamp without time zone", "timestamp with time zone", None),
        ("jsonb", "jsonb", None),
        ("text", "numeric", "decimal"),
        ("text", "double precision", "float"),
        ("numeric(12,2)", "bigint", "int"),
    ],
)
def test_the_same_family_or_a_widening_fits(
    source: str, target: str, transform: str | None
) -> None:
    """Every value of the source type, after its transform, can be stored in the target."""
    assert verdict(source, target, transform) is Verdict.FITS


@pytest.mark.parametrize(
    ("source", "target", "transform"),
    [
        ("numeric(12,2)", "numeric(6,2)", None),
        ("numeric(12,2)", "numeric(10,4)", None),
        ("numeric(4,3)", "numeric(3,2)", None),  # 9.995 rounds to 10.00
        ("text", "character varying(3)", None),
        ("character varying(10)", "character(3)", None),
        ("bigint", "integer", None),
        ("integer", "smallint", None),
        ("numeric", "integer", None),
        ("numeric(12,0)", "integer", None),
        ("double precision", "numeric(6,2)", None),
        ("text", "numeric(12,2)", "decimal"),
        ("numeric(12,2)", "integer", "int"),
        ("uuid", "character varying(3)", None),
    ],
)
def test_a_narrowing_needs_a_value_check(source: str, target: str, transform: str | None) -> None:
    """Some values may not fit: the verdict narrows and planning gets a per-value check."""
    decision = decide(parse_type(source), parse_type(target), transform)
    assert decision.verdict is Verdict.NARROWS
    assert decision.check() is not None


@pytest.mark.parametrize(
    ("source", "target", "transform", "fix"),
    [
        ("text", "numeric(12,2)", None, ":decimal"),
        ("text", "integer", "strip", ":decimal"),
        ("timestamp with time zone", "integer", None, "map a numeric column"),
        ("numeric(12,2)", "integer", None, ":int"),
        ("double precision", "bigint", None, ":int"),
        ("boolean", "integer", None, "map a numeric column"),
        ("integer", "date", None, "map a date/time column"),
        ("timestamp with time zone", "numeric", "float", "cannot convert"),
        ("text", "date", None, "map a date/time column"),
    ],
)
def test_an_impossible_pair_is_an_error_naming_the_fix(
    source: str, target: str, transform: str | None, fix: str
) -> None:
    """No value of the source can be stored in the target: the reason says what would work."""
    decision = decide(parse_type(source), parse_type(target), transform)
    assert decision.verdict is Verdict.IMPOSSIBLE
    assert fix in decision.reason


@pytest.mark.parametrize(
    ("source", "target", "transform", "checked"),
    [
        ("jsonb", "json", None, False),
        ("double precision", "real", None, False),
        ("my_domain", "numeric(6,2)", None, True),
        ("integer", "numeric(6,2)", "()", True),
        ("integer", "text", "()", False),
    ],
)
def test_an_unknown_pair_is_not_checked_rather_than_passed(
    source: str, target: str, transform: str | None, checked: bool
) -> None:
    """Exotic types and functions are 'not checked'; a bounded target still checks each value."""
    decision = decide(parse_type(source), parse_type(target), transform)
    assert decision.verdict is Verdict.UNCHECKED
    assert (decision.check() is not None) is checked


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        (Decimal("9999.99"), "numeric(6,2)", True),
        (Decimal("-9999.994"), "numeric(6,2)", True),
        (Decimal("9999.995"), "numeric(6,2)", False),
        (Decimal("12345.67"), "numeric(6,2)", False),
        (Decimal("1E+30"), "numeric(6,2)", False),
        (Decimal("NaN"), "numeric(6,2)", True),
        (Decimal("Infinity"), "numeric(6,2)", False),
        (99.99, "numeric(4,2)", True),
        (1e300, "numeric(6,2)", False),
        (123456, "numeric(10,4)", True),
        (1234567, "numeric(10,4)", False),
        ("abc", "character varying(3)", True),
        ("abcd", "character varying(3)", False),
        ("abc  ", "character(3)", True),
        ("ab c", "character varying(3)", False),
        (2**31 - 1, "integer", True),
        (-(2**31), "integer", True),
        (2**31, "integer", False),
        (40000, "smallint", False),
        (Decimal("5"), "integer", True),
        (Decimal("5.00"), "integer", False),
        (5.0, "integer", False),
        (None, "numeric(6,2)", True),
        (True, "smallint", True),
    ],
)
def test_fits_is_the_sandbox_columns_rule(value: Any, target: str, expected: bool) -> None:
    """numeric(p,s): abs(round(v, s)) < 10^(p-s); varchar(n): n characters bar trailing spaces."""
    assert fits(value, parse_type(target)) is expected


def _misfit_row() -> tuple[MappingStatistics, Any]:
    mappings = [FieldMapping("fab_order", "fab_order"), FieldMapping("stage", "stage")]
    check = decide(parse_type("numeric(12,2)"), parse_type("numeric(6,2)"), None).check()
    stats = MappingStatistics()
    result = plan_row(
        (7, "A"), [Decimal("12345.67"), "cut"], [Decimal(1), "new"], mappings, [check, None]
    )
    stats.record(result)
    return stats, result


def test_a_row_with_a_value_that_does_not_fit_is_not_an_update() -> None:
    """The whole row is set apart (no change planned), counted as unfit and as failed."""
    stats, result = _misfit_row()
    assert result.status is MatchStatus.MATCHED
    assert result.changes == ()
    assert [m.field for m in result.misfits] == ["fab_order"]
    assert result.error == "fab_order 12345.67 does not fit numeric(6,2)"
    assert (stats.unfit, stats.failed, stats.rows_with_differences) == (1, 1, 0)
    assert stats.failures[0].kind == "unfit"


def test_the_report_lists_unfit_rows_under_their_own_heading() -> None:
    """Text and JSON reports show the rows the sandbox cannot hold apart from the updates."""
    stats, result = _misfit_row()
    report = ReconcileReport(True, "p", "s", ("fab_order", "stage"), statistics=stats)
    report.note(result)
    text = render_text(report)
    assert "Values the Sandbox Cannot Hold (1, not written):" in text
    assert "  - 7-A: fab_order 1 → 12345.67 (fab_order 12345.67 does not fit numeric(6,2))" in text
    assert "Updates Needed" not in text
    assert "✗ Dry run: 1 rows have a value the sandbox cannot hold" in text
    document = json.loads(render_json(report))
    assert document["statistics"]["unfit"] == 1
    assert document["unfit"][0]["values"] == [{"field": "fab_order", "old": 1, "new": 12345.67}]


def test_the_text_of_a_number_stores_as_that_number() -> None:
    """integer:text into numeric fits; into numeric(6,2) it narrows; text itself stays refused."""
    integer, numeric, text = parse_type("integer"), parse_type("numeric"), parse_type("text")
    assert decide(integer, numeric, "text").verdict is Verdict.FITS
    assert decide(integer, parse_type("numeric(6,2)"), "text").verdict is Verdict.NARROWS
    assert decide(text, numeric, None).verdict is Verdict.IMPOSSIBLE


def test_number_text_is_read_as_postgresql_reads_it() -> None:
    """A number sent as text fits by its value; text that is no number never fits a number."""
    small, integer = parse_type("numeric(6,2)"), parse_type("integer")
    assert fits("5", small)
    assert fits(" 7 ", integer)
    assert fits("NaN", small)
    assert not fits("12345.67", small)
    assert not fits("abc", small)
    assert not fits("5.0", integer)
    assert not fits("1_000", integer)
