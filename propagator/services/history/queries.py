"""Reading history: filters from text, one page of entries newest first, a cursor to the next.

The same filters serve ``propagator history`` (options) and ``GET /history``
(query parameters); bad input raises one ``ConfigurationError`` line. Which
mappings to read is decided by the caller, against the configured names
(``readers``), and given here as ``HistoryQuery.mappings``.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from propagator.adapters.connections import Connection
from propagator.adapters.postgres import translate_error, with_parameters
from propagator.core.mapping import format_key
from propagator.core.vocabulary import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT
from propagator.errors import ConfigurationError, SchemaError
from propagator.services.history.schema import HISTORY_SOURCES, not_set_up
from propagator.settings import DEFAULT_MAPPING, parse_duration
from propagator.settings.model import MAPPING_NAME
from propagator.sql import load_sql

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "parse_key",
    "parse_time",
    "query",
]

DEFAULT_LIMIT: Final = HISTORY_DEFAULT_LIMIT
MAX_LIMIT: Final = HISTORY_MAX_LIMIT
MAX_KEY_CHARS: Final = 1000
MAX_NUMBER_DIGITS: Final = 18
"""Whole-number parameters (limit, before) longer than this are refused before ``int``."""
MAX_AGE: Final = timedelta(days=36_525)
_TOO_LONG: Final = MAX_AGE + timedelta(days=1)


def parse_key(text: str) -> str:
    """A key as typed (``10001-A`` or a JSON array like ``[10001, "A"]``) -> its label."""
    text = text.strip()
    if not text:
        raise ConfigurationError("--key needs a value such as 10001-A or '[10001, \"A\"]'")
    if len(text) > MAX_KEY_CHARS:
        raise ConfigurationError(f"--key is longer than {MAX_KEY_CHARS} characters")
    if text.startswith("["):
        if _nesting(text) > 1:
            raise ConfigurationError(f"--key {text!r} must be a flat JSON array of key values")
        try:
            parts = json.loads(text, parse_float=Decimal)
        except ValueError:
            raise ConfigurationError(f"--key {text!r} is not a valid JSON array") from None
        if (
            not isinstance(parts, list)
            or not parts
            or any(isinstance(p, dict | list) for p in parts)
        ):
            raise ConfigurationError(f"--key {text!r} must be a JSON array of key values")
        return format_key(tuple(parts))
    return text


def _nesting(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON text, strings skipped (no recursion needed)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_time(text: str, *, now: datetime | None = None, what: str = "time") -> datetime:
    """ISO 8601 (``2024-05-01T10:00``; local time without an offset) or an age (``1h``, ``7d``).

    Ages reach back at most ``MAX_AGE`` (a century), times lie in the years 1900 to 9998.
    """
    text = text.strip()
    now = now or datetime.now(UTC)
    try:
        age = parse_duration(text)
    except ValueError:
        age = _TOO_LONG
    if isinstance(age, timedelta):
        if age > MAX_AGE:
            raise ConfigurationError(f"{what} {text!r} reaches back more than 100 years")
        return now - age
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{what} {text!r} is neither an ISO time (2024-05-01T10:00) nor an age (30m, 1h, 2d)"
        ) from None
    if not 1900 <= moment.year <= 9998:
        raise ConfigurationError(f"{what} {text!r} is outside the years 1900 to 9998")
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a person's wall-clock time
    return moment


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Filters for reading history; newest first, ``before`` is the page cursor (an id).

    ``mappings``: only rows these mappings wrote (empty: every row of the table).
    """

    key_label: str | None = None
    field: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    before: int | None = None
    mappings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ConfigurationError(f"limit must be between 1 and {MAX_LIMIT}, not {self.limit}")
        if self.source is not None and self.source not in HISTORY_SOURCES:
            raise ConfigurationError(
                f"source must be one of {', '.join(HISTORY_SOURCES)}, not {self.source!r}"
            )
        if self.since and self.until and self.since > self.until:
            raise ConfigurationError("since is later than until: nothing can match")
        if self.before is not None and self.before < 1:
            raise ConfigurationError("before must be a positive history id")
        for name in self.mappings:
            if not MAPPING_NAME.fullmatch(name):
                raise ConfigurationError(f"mapping {name[:40]!r} is not a mapping name")

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, str | None],
        *,
        now: datetime | None = None,
        mappings: Sequence[str] = (),
    ) -> HistoryQuery:
        """Build from text (CLI options or query parameters); bad input raises one clear line.

        ``mappings`` are names already checked against the configuration.
        """

        def text(name: str) -> str | None:
            value = params.get(name)
            return value.strip() if value is not None and value.strip() else None

        def number(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            if not (value.isascii() and value.isdigit()) or len(value) > MAX_NUMBER_DIGITS:
                raise ConfigurationError(f"{name} must be a whole number, not {value[:40]!r}")
            return int(value)

        key, since, until, limit = text("key"), text("since"), text("until"), number("limit")
        return cls(
            key_label=parse_key(key) if key else None,
            field=text("field"),
            source=text("source"),
            since=parse_time(since, now=now, what="since") if since else None,
            until=parse_time(until, now=now, what="until") if until else None,
            limit=DEFAULT_LIMIT if limit is None else limit,
            before=number("before"),
            mappings=tuple(mappings),
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded field change; values are kept as the JSON text stored."""

    id: int
    batch_id: uuid.UUID
    source: str
    changed_at: datetime | None
    applied_at: datetime
    key: tuple[Any, ...]
    key_label: str
    field: str
    old_json: str
    new_json: str
    mapping: str = DEFAULT_MAPPING

    @property
    def old_value(self) -> Any:
        return json.loads(self.old_json)

    @property
    def new_value(self) -> Any:
        return json.loads(self.new_json)

    @property
    def lag_seconds(self) -> float | None:
        """Production change to sandbox write, when the change time is known."""
        if self.changed_at is None:
            return None
        return max(0.0, (self.applied_at - self.changed_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "batch_id": str(self.batch_id),
            "source": self.source,
            "mapping": self.mapping,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "applied_at": self.applied_at.isoformat(),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 6),
            "key": list(self.key),
            "key_label": self.key_label,
            "field": self.field,
            "old_value": self.old_value,
            "new_value": self.new_value,
            # The values exactly as stored (12.10 stays 12.10), for display.
            "old_json": self.old_json,
            "new_json": self.new_json,
        }


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of entries, newest first, and the cursor for the next (older) page."""

    entries: tuple[HistoryEntry, ...]
    next_before: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": [entry.as_dict() for entry in self.entries],
            "count": len(self.entries),
            "next_before": self.next_before,
        }


def query(conn: Connection, schema: str, filters: HistoryQuery) -> HistoryPage:
    """History rows matching ``filters``, newest first, one page of ``filters.limit``."""
    where, params = _conditions(filters)
    statement = sql.SQL(_page_sql()).format(schema=sql.Identifier(schema), where=where)
    try:
        with conn.transaction():
            rows = conn.execute(with_parameters(statement, [schema]), params).fetchall()
    except pg_errors.UndefinedTable:
        raise SchemaError(not_set_up(schema)) from None
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", "reading the sync history") from None
    entries = tuple(_entry(row) for row in rows[: filters.limit])
    more = len(rows) > filters.limit
    return HistoryPage(entries, entries[-1].id if more and entries else None)


@functools.cache
def _page_sql() -> str:
    """``sql/history/page.sql``, read once; its ``{where}`` depends on the filters."""
    return str(load_sql("history/page.sql"))


def _conditions(filters: HistoryQuery) -> tuple[sql.Composable, dict[str, Any]]:
    """The ``WHERE`` clause for the filters given (empty for none), and its parameters.

    One more row than the page shows is asked for, to know whether an older page exists.
    """
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": filters.limit + 1}
    if len(filters.mappings) == 1:  # plain equality: an ordered scan of (mapping, id)
        conditions.append(sql.SQL("mapping = %(mapping)s"))
        params["mapping"] = filters.mappings[0]
    elif filters.mappings:
        conditions.append(sql.SQL("mapping = ANY(%(mappings)s)"))
        params["mappings"] = list(filters.mappings)
    for column, value in (
        ("key_label", filters.key_label),
        ("field", filters.field),
        ("source", filters.source),
    ):
        if value is not None:
            conditions.append(
                sql.SQL("{} = %({})s").format(sql.Identifier(column), sql.SQL(column))
            )
            params[column] = value
    if filters.since is not None:
        conditions.append(sql.SQL("applied_at >= %(since)s"))
        params["since"] = filters.since
    if filters.until is not None:
        conditions.append(sql.SQL("applied_at <= %(until)s"))
        params["until"] = filters.until
    if filters.before is not None:
        conditions.append(sql.SQL("id < %(before)s"))
        params["before"] = filters.before
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


def _entry(row: Sequence[Any]) -> HistoryEntry:
    (id_, batch_id, source, changed_at, applied_at, key, label, field, old, new, mapping) = row
    return HistoryEntry(
        id=int(id_),
        batch_id=batch_id,
        source=source,
        changed_at=changed_at,
        applied_at=applied_at,
        key=tuple(json.loads(key)),
        key_label=label,
        field=field,
        old_json=old if old is not None else "null",
        new_json=new if new is not None else "null",
        mapping=mapping,
    )
