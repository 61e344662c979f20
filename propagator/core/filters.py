"""The production filter: one SQL boolean expression that must stay inside its parentheses.

The filter is trusted text from configuration and is pasted into queries as
``WHERE (<filter>) AND ...``. Pasting is only safe if the text cannot close that
parenthesis early: ``stage = 'x') OR (true`` would otherwise widen the filter to
every row, and a comment would swallow the rest of the query. So the text is
scanned the way PostgreSQL's lexer reads it (quoted strings, quoted names,
dollar quotes, comments) and refused unless its parentheses balance outside
the quotes, it has no comment and no statement separator. Nothing here decides
what the expression means: the server still parses it and reports its errors.
"""

from __future__ import annotations

import functools
import re

__all__ = ["validate_filter"]


@functools.cache
def _dollar_tag() -> re.Pattern[str]:
    """Compiled on first use: its non-ASCII ranges take ~5 ms, a cost every start paid."""
    return re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


def validate_filter(text: str) -> str:
    """Return ``text`` if it is one self-contained expression; raise ``ValueError`` if not."""
    depth = 0
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "'":
            index = _end_of_quoted(text, index, escapes=_is_escape_string(text, index))
            continue
        if char == '"':
            index = _end_of_quoted(text, index)
            continue
        if char == "$" and not _continues_word(text, index):
            tag = _dollar_tag().match(text, index)
            if tag is not None:
                end = text.find(tag.group(), tag.end())
                if end < 0:
                    raise ValueError(f"has an unterminated dollar-quoted string {tag.group()}")
                index = end + len(tag.group())
                continue
        if text.startswith(("--", "/*"), index):
            raise ValueError("must not contain SQL comments (-- or /*)")
        if char == ";":
            raise ValueError("must be one SQL boolean expression (no ';')")
        if char == "\x00":
            raise ValueError("must not contain a NUL character")
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("has a ')' without its '(' (it would widen the filter)")
        index += 1
    if depth:
        raise ValueError(f"has {depth} '(' without its ')'")
    return text


def _continues_word(text: str, index: int) -> bool:
    """``$`` inside a name (``a$b``) or a parameter (``$1``) does not open a dollar quote."""
    return index > 0 and (text[index - 1].isalnum() or text[index - 1] in "_$")


def _is_escape_string(text: str, index: int) -> bool:
    """``E'...'`` (backslash escapes) as opposed to a standard string or a name ending in e."""
    if index == 0 or text[index - 1] not in "eE":
        return False
    return index == 1 or not (text[index - 2].isalnum() or text[index - 2] in "_$")


def _end_of_quoted(text: str, start: int, *, escapes: bool = False) -> int:
    """Index just past the quote closing the one at ``start`` (a doubled quote is a character)."""
    quote = text[start]
    index, length = start + 1, len(text)
    while index < length:
        char = text[index]
        if escapes and char == "\\":
            index += 2
            continue
        if char == quote:
            if index + 1 < length and text[index + 1] == quote:
                index += 2
                continue
            return index + 1
        index += 1
    what = "quoted string" if quote == "'" else "quoted name"
    raise ValueError(f"has an unterminated {what}")
