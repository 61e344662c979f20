"""Parsing of (possibly schema-qualified) SQL names given in configuration.

Names are kept as plain strings and are only ever rendered through
``psycopg.sql.Identifier`` by the adapters, so a hostile name can at worst fail
to match a table; it can never be executed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QualifiedName", "parse_qualified_name", "validate_identifier"]

_MAX_IDENTIFIER_BYTES = 63


def validate_identifier(name: str, *, what: str) -> str:
    """Refuse names PostgreSQL would silently truncate or cannot store."""
    if not name:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in name:
        raise ValueError(f"{what} must not contain a NUL character")
    if len(name.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{what} {name!r} is longer than PostgreSQL's 63-byte identifier limit")
    return name


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """A table name with an optional schema, exactly as stored in the catalog."""

    schema: str | None
    name: str

    def parts(self) -> tuple[str, ...]:
        return (self.name,) if self.schema is None else (self.schema, self.name)

    def __str__(self) -> str:
        return ".".join(_display(part) for part in self.parts())


def _display(part: str) -> str:
    plain = part.isidentifier() and part == part.lower() and part.isascii()
    return part if plain else '"' + part.replace('"', '""') + '"'


def parse_qualified_name(text: str, *, what: str = "table name") -> QualifiedName:
    """Parse ``schema.table``, ``table`` or quoted forms such as ``"My Schema"."odd.name"``.

    Unquoted parts are folded to lower case as PostgreSQL does; quoted parts keep
    their case and may contain dots, spaces and doubled quotes.
    """
    parts: list[str] = []
    index, length = 0, len(text)
    while True:
        while index < length and text[index].isspace():
            index += 1
        if index < length and text[index] == '"':
            index += 1
            buffer: list[str] = []
            while True:
                if index >= length:
                    raise ValueError(f"{what} {text!r} has an unterminated quote")
                char = text[index]
                if char == '"':
                    if index + 1 < length and text[index + 1] == '"':
                        buffer.append('"')
                        index += 2
                        continue
                    index += 1
                    break
                buffer.append(char)
                index += 1
            part = "".join(buffer)
        else:
            start = index
            while index < length and text[index] not in '."' and not text[index].isspace():
                index += 1
            part = text[start:index].lower()
        parts.append(validate_identifier(part, what=what))
        while index < length and text[index].isspace():
            index += 1
        if index == length:
            break
        if text[index] != ".":
            raise ValueError(f"{what} {text!r} is not a valid name (unexpected {text[index]!r})")
        index += 1
    if len(parts) > 2:
        raise ValueError(f"{what} {text!r} has more than two parts; use schema.table")
    if len(parts) == 1:
        return QualifiedName(None, parts[0])
    return QualifiedName(parts[0], parts[1])
