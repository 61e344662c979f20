"""Property: a production filter the settings accept stays inside its parentheses on the server.

Hypothesis strings together the pieces that could end a filter's parenthesis
early or hide the rest of the query (parentheses, quotes of every kind, comment
marks, separators, backslashes). Whenever ``validate_filter`` accepts such a
text, PostgreSQL itself must read ``WHERE (<filter>) AND false`` as one
condition: it may reject the text, but it can never return a row.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from propagator.adapters.postgres import filter_condition
from propagator.core.filters import validate_filter
from tests.helpers import DatabasePair

PIECES = [
    "(", ")", ") OR (", "'", '"', "''", '""', "--", "/*", "*/", "$$", "$a$", "E'", "\\",
    "true", " OR ", " = ", " ", "\n", "note", ";", "%", "'('", "')'", '"("', "$$)$$",
]  # fmt: skip


# One row, with columns the attempts below can name.
TABLE = """SELECT 1 FROM (VALUES ('a', 'a', 'a')) AS t(note, "(", ")")"""


@pytest.fixture
def connection(databases: DatabasePair) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with databases.production.connect() as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET statement_timeout = '5s'")
        yield conn


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=12))
# Widening attempts the lexer must see through, one per kind of quote: each is
# balanced only if the parentheses inside the quotes are counted.
@example(pieces=["true) OR (true"])
@example(pieces=["'(' = '(' ) OR ( ')' = ')'"])
@example(pieces=["\"(\" = 'a' ) OR ( \")\" = 'a'"])
@example(pieces=["$$($$ = $$($$ ) OR ( $$)$$ = $$)$$"])
@example(pieces=["E'\\'(' = E'\\'(' ) OR ( E'\\')' = E'\\')'"])
def test_an_accepted_filter_never_widens_the_query(
    connection: psycopg.Connection[tuple[object, ...]], pieces: list[str]
) -> None:
    """Accepted texts either fail on the server or select nothing under ``AND false``."""
    text = "".join(pieces)
    try:
        validate_filter(text)
    except ValueError:
        return
    query = sql.SQL(TABLE + " WHERE {} AND false").format(filter_condition(text))
    try:
        rows = connection.execute(query).fetchall()
    except psycopg.Error:
        return
    assert rows == [], text
