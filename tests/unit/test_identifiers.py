"""Parsing of configured (possibly schema-qualified, possibly quoted) table names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.identifiers import QualifiedName, parse_qualified_name


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("jobs", None, "jobs"),
        ("public.jobs", "public", "jobs"),
        ("Public.Jobs", "public", "jobs"),
        ("  public . jobs  ", "public", "jobs"),
        ('"Jobs"', None, "Jobs"),
        ('"My Schema"."odd.name"', "My Schema", "odd.name"),
        ('public."say ""hi"""', "public", 'say "hi"'),
        ('"Ünïcödé"."日本"', "Ünïcödé", "日本"),
        ("ÉTÉ.jobs", "été", "jobs"),
        ('"a.b.c"', None, "a.b.c"),
        ('"".x', None, None),
    ],
)
def test_parse(text: str, schema: str | None, name: str | None) -> None:
    """Plain, qualified and quoted names parse as PostgreSQL reads them."""
    if name is None:
        with pytest.raises(ValueError, match="must not be empty"):
            parse_qualified_name(text)
        return
    assert parse_qualified_name(text) == QualifiedName(schema, name)


def test_unquoted_parts_fold_to_lower_case_and_quoted_parts_keep_case() -> None:
    """JOBS and jobs are one table; "JOBS" is another."""
    assert parse_qualified_name("JOBS") == parse_qualified_name("jobs")
    assert parse_qualified_name('"JOBS"') != parse_qualified_name("jobs")
    assert parse_qualified_name('"JOBS"').name == "JOBS"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"jobs', "unterminated quote"),
        ('public."jobs', "unterminated quote"),
        ('"say ""hi""', "unterminated quote"),
        ("a.b.c", "more than two parts"),
        ('"a"."b"."c"', "more than two parts"),
        ("x" * 64, "63-byte"),
        ('"' + "é" * 32 + '"', "63-byte"),
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("public.", "must not be empty"),
        (".jobs", "must not be empty"),
        ("public..jobs", "must not be empty"),
        ('"a"b', "unexpected 'b'"),
        ("public jobs", "unexpected 'j'"),
        ('"a\x00"', "NUL"),
    ],
)
def test_clear_errors(text: str, message: str) -> None:
    """Malformed names fail with a message that says what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_qualified_name(text)


def test_error_names_what_was_parsed() -> None:
    """The caller's description of the name leads the error message."""
    with pytest.raises(ValueError, match=r"^sandbox table 'a\.b\.c' has more than two parts"):
        parse_qualified_name("a.b.c", what="sandbox table")


def test_exactly_63_bytes_is_accepted() -> None:
    """PostgreSQL's limit is 63 bytes, inclusive."""
    assert parse_qualified_name("x" * 63).name == "x" * 63


def test_str_quotes_only_what_needs_quoting() -> None:
    """str() gives a name that parses back to the same parts, quoted only where needed."""
    assert str(QualifiedName("public", "jobs")) == "public.jobs"
    assert str(QualifiedName("My Schema", "odd.name")) == '"My Schema"."odd.name"'
    assert str(QualifiedName(None, 'say "hi"')) == '"say ""hi"""'
    assert str(QualifiedName(None, "Jobs")) == '"Jobs"'
    assert QualifiedName("s", "t").parts() == ("s", "t")
    assert QualifiedName(None, "t").parts() == ("t",)


part_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
).filter(lambda s: len(s.encode("utf-8")) <= 63)


@given(st.one_of(st.none(), part_text), part_text)
def test_str_round_trips(schema: str | None, name: str) -> None:
    """Any storable name printed with str() parses back to itself."""
    qualified = QualifiedName(schema, name)
    assert parse_qualified_name(str(qualified)) == qualified
