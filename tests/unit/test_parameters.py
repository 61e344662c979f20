"""Statements sent with parameters keep a '%' in a name as a character."""

from __future__ import annotations

from psycopg import sql

from propagator.adapters.postgres import with_parameters

STATEMENT = sql.SQL("UPDATE {} SET {} = %s WHERE {} = {}").format(
    sql.Identifier("Jobs 100%"), sql.Identifier("pct%b"), sql.Identifier("job"), sql.Literal(7)
)


def test_names_with_percent_are_doubled_and_placeholders_kept() -> None:
    """Only the names' '%' are doubled: psycopg then reads exactly one placeholder."""
    escaped = with_parameters(STATEMENT, ["Jobs 100%", "pct%b", "job"]).as_string(None)
    assert escaped == 'UPDATE "Jobs 100%%" SET "pct%%b" = %s WHERE "job" = 7'


def test_statements_without_percent_in_names_are_returned_as_they_are() -> None:
    """The common case costs nothing: the same object comes back."""
    plain = sql.SQL("SELECT {} WHERE x = %s").format(sql.Identifier("job"))
    assert with_parameters(plain, ["job"]) is plain
