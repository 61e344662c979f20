"""The production filter cannot close its parentheses early, comment out the query or chain one."""

from __future__ import annotations

import re

import pytest

from propagator.core.filters import validate_filter


@pytest.mark.parametrize(
    "text",
    [
        "stage = 'open'",
        "stage IS DISTINCT FROM 'draft' AND (fab_order > 0 OR job IN (1, 2))",
        "note <> ';'",  # a separator inside a string is just a character
        "note = ')' OR note = '('",
        "note = 'it''s (open'",
        '"odd ) name" = 1',
        '"say ""hi"" (" IS NULL',
        "note = E'it\\'s )'",
        "note = $$ ) -- /* ; $$",
        "note = $tag$ $$ ) $tag$",
        "release LIKE 'A%'",
        "price$ > 0 AND a$b = 1",  # '$' inside a name opens no quote
        "note = 'a--b' AND note <> '/*'",
        "ye = 'x'",  # a name ending in e before a string is not an E'' string
    ],
)
def test_self_contained_expressions_are_accepted(text: str) -> None:
    """Quotes, dollar quotes and escape strings hide parentheses, separators and comment marks."""
    assert validate_filter(text) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stage = 'x') OR (true", "')' without its '('"),
        ("stage = 'x' OR true --", "comments"),
        ("(stage = 'x'", "1 '(' without its ')'"),
        ("true; DROP TABLE jobs", "no ';'"),
        ("true --", "comments"),
        ("true /* note */", "comments"),
        ("note = 'open", "unterminated quoted string"),
        ("note = 'it''s", "unterminated quoted string"),
        ("note = E'it\\'s", "unterminated quoted string"),
        ('"open = 1', "unterminated quoted name"),
        ("note = $x$ open", "unterminated dollar-quoted string $x$"),
        ("note = 'a'\x00", "NUL"),
        ("ye = 'x\\') OR (true", "')' without its '('"),  # standard string: \\ is a character
    ],
)
def test_expressions_that_could_escape_are_refused(text: str, needle: str) -> None:
    """Each refusal names what is wrong, so the one-line error tells the user what to fix."""
    with pytest.raises(ValueError, match=re.escape(needle)):
        validate_filter(text)
