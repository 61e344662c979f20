"""Sync history: every sandbox change, recorded in the transaction that made it.

The history hook runs inside the sandbox transaction of each applied batch
(``converge_keys(..., on_applied=...)``), so a batch that rolls back leaves no
history and a committed one leaves exactly one row per changed field. Rows are
written set-based (one ``INSERT … SELECT FROM unnest`` per batch) into a schema
of the sandbox's own (``history_schema``), created and upgraded by versioned
migrations in ``sql/history/``. Old rows are pruned by age in small batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from importlib import resources
from json.encoder import encode_basestring
from typing import Any, Final, get_args

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from propagator.adapters.postgres import connect, translate_error, with_parameters
from propagator.core.mapping import format_key
from propagator.core.plan import JobMappingResult
from propagator.errors import ConfigurationError, PropagatorError, SchemaError
from propagator.services.sync import AppliedHook, Source
from propagator.settings import Settings, parse_duration
from propagator.sql import load_sql

__all__ = [
    "DEFAULT_LIMIT",
    "HISTORY_SOURCES",
    "HISTORY_TABLE",
    "MAX_LIMIT",
    "PRUNE_BATCH_ROWS",
    "PRUNE_INTERVAL",
    "History",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "HistoryReader",
    "Migration",
    "PruneResult",
    "SetupResult",
    "installed_version",
    "json_text",
    "migrations",
    "parse_key",
    "parse_time",
    "prune",
    "query",
    "record",
    "setup",
]

Connection = psycopg.Connection[tuple[Any, ...]]

HISTORY_TABLE: Final = "sync_history"
HISTORY_SOURCES: Final[tuple[str, ...]] = get_args(Source)
PRUNE_BATCH_ROWS: Final = 5_000
"""Rows deleted per retention statement: short transactions, no long locks."""
PRUNE_INTERVAL: Final = timedelta(minutes=5)
"""How often the daemon prunes; retention is by age, so more often gains nothing."""
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 10_000

_READ_TIMEOUT = timedelta(seconds=10)
_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_SETUP_LOCK_NAMESPACE = "propagator.history"


# Migrations and setup.


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``sql/history/NNNN_name.sql`` file; applied once, in version order."""

    version: int
    name: str

    @property
    def path(self) -> str:
        return f"history/{self.version:04d}_{self.name}.sql"

    def statement(self, schema: str) -> sql.Composed:
        return _with_schema(load_sql(self.path), schema)


def migrations() -> tuple[Migration, ...]:
    """Every shipped migration, in version order."""
    folder = resources.files("propagator.sql").joinpath("history")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group("version")), match.group("name")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"history migrations are not numbered 1..n: {versions}")
    return tuple(found)


def _with_schema(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(schema=sql.Identifier(schema))


@functools.lru_cache(maxsize=32)
def _statement(path: str, schema: str) -> sql.Composed:
    """A statement file with the schema filled in, read once per process."""
    return _with_schema(load_sql(path), schema)


@dataclass(frozen=True, slots=True)
class SetupResult:
    """What ``setup`` found and did."""

    schema: str
    version: int
    applied: tuple[Migration, ...]
    created_schema: bool

    def describe(self) -> str:
        if not self.applied:
            return f"history schema {self.schema} is up to date (version {self.version})"
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in self.applied)
        return f"history schema {self.schema} now at version {self.version} (applied {names})"


def _schema_exists(conn: Connection, schema: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = %s)", (schema,)
    ).fetchone()
    return bool(row and row[0])


def installed_version(conn: Connection, schema: str) -> int | None:
    """The highest applied migration, or None when the history schema is not set up."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT to_regclass(format('%%I.schema_version', %s::text)) IS NOT NULL",
                (schema,),
            ).fetchone()
            if not row or not row[0]:
                return None
            found = conn.execute(
                sql.SQL("SELECT max(version) FROM {}.schema_version").format(sql.Identifier(schema))
            ).fetchone()
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", "reading the history schema version") from None
    return int(found[0]) if found and found[0] is not None else None


def setup(conn: Connection, schema: str) -> SetupResult:
    """Create the history schema and apply every pending migration; safe to run again.

    One transaction, serialized by an advisory lock, so two daemons starting at
    once cannot apply a migration twice. An existing schema is used as it is: a
    least-privilege role needs only ``USAGE, CREATE`` on it, not ``CREATE`` on
    the database.
    """
    pending: list[Migration] = []
    try:
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"{_SETUP_LOCK_NAMESPACE}.{schema}",),
            )
            created = not _schema_exists(conn, schema)
            if created:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(_with_schema(load_sql("history/schema_version.sql"), schema))
            applied = {
                int(row[0])
                for row in conn.execute(
                    sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema))
                )
            }
            for migration in migrations():
                if migration.version in applied:
                    continue
                conn.execute(migration.statement(schema))
                insert = sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)")
                conn.execute(
                    with_parameters(insert.format(sql.Identifier(schema)), [schema]),
                    (migration.version, migration.name),
                )
                pending.append(migration)
            version = max(applied | {m.version for m in pending}, default=0)
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", f"setting up history schema {schema}") from None
    return SetupResult(schema, version, tuple(pending), created)


def _not_set_up(schema: str) -> str:
    return (
        f"history schema {schema} is not set up: run `propagator setup` "
        "(or set PROPAGATOR_HISTORY_ENABLED=false)"
    )


def _require_current(conn: Connection, schema: str) -> None:
    expected = len(migrations())
    found = installed_version(conn, schema)
    if found is None:
        raise SchemaError(_not_set_up(schema))
    if found < expected:
        raise SchemaError(
            f"history schema {schema} is at version {found}, this release needs {expected}: "
            "run `propagator setup`"
        )


# Values as JSON.


def _decimal_json(value: Decimal) -> str:
    return str(value) if value.is_finite() else json.dumps(str(value))


def _float_json(value: float) -> str:
    return repr(value) if math.isfinite(value) else json.dumps(repr(value))


def _string_json(value: str) -> str:
    return encode_basestring(value)  # json.dumps(value, ensure_ascii=False), minus its overhead


def _array_json(values: Sequence[Any]) -> str:
    return "[" + ",".join([json_text(value) for value in values]) + "]"


_JSON_BY_TYPE: Final[dict[type, Callable[[Any], str]]] = {
    int: str,
    str: _string_json,
    Decimal: _decimal_json,
    float: _float_json,
    bool: lambda value: "true" if value else "false",
    tuple: _array_json,  # keys
    list: _array_json,
}


def json_text(value: Any) -> str:
    """A value as JSON text, its type kept readable: numbers stay numbers, exactly.

    Decimals keep their digits and scale (``12.10``), which ``json.dumps`` cannot
    do; dates and times become ISO strings, like PostgreSQL's ``to_jsonb``.
    """
    if value is None:
        return "null"
    exact = _JSON_BY_TYPE.get(type(value))
    if exact is not None:
        return exact(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        return _decimal_json(value)
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, str):
        return _string_json(value)
    if isinstance(value, datetime | date | time_of_day):
        return json.dumps(value.isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return json.dumps("\\x" + bytes(value).hex())
    if isinstance(value, list | tuple):
        return _array_json(value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


# Recording.


def _epoch_to_datetime(moment: float | datetime | None) -> datetime | None:
    if moment is None or isinstance(moment, datetime):
        return moment
    return datetime.fromtimestamp(moment, UTC)


def record(
    conn: Connection,
    schema: str,
    results: Sequence[JobMappingResult],
    source: Source,
    *,
    changed_at: float | datetime | None = None,
    batch_id: uuid.UUID | None = None,
) -> int:
    """Insert one history row per changed field of ``results``; returns how many.

    Meant to run inside the transaction that applied ``results``: one
    statement, however many rows.
    """
    if source not in HISTORY_SOURCES:
        raise ValueError(f"unknown history source {source!r}")
    keys: list[str] = []
    labels: list[str] = []
    fields: list[str] = []
    olds: list[str] = []
    news: list[str] = []
    for result in results:
        key_json, label = json_text(result.key), format_key(result.key)
        for change in result.changes:
            keys.append(key_json)
            labels.append(label)
            fields.append(change.field)
            olds.append(json_text(change.old))
            news.append(json_text(change.new))
    if not fields:
        return 0
    conn.execute(
        with_parameters(_statement("history/record.sql", schema), [schema]),
        {
            "batch_id": batch_id or uuid.uuid4(),
            "source": source,
            "changed_at": _epoch_to_datetime(changed_at),
            "keys": keys,
            "key_labels": labels,
            "fields": fields,
            "old_values": olds,
            "new_values": news,
        },
    )
    return len(fields)


# Reading.


def parse_key(text: str) -> str:
    """A key as typed (``10001-A`` or a JSON array like ``[10001, "A"]``) -> its label."""
    text = text.strip()
    if not text:
        raise ConfigurationError("--key needs a value such as 10001-A or '[10001, \"A\"]'")
    if text.startswith("["):
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


def parse_time(text: str, *, now: datetime | None = None, what: str = "time") -> datetime:
    """ISO 8601 (``2024-05-01T10:00``; local time without an offset) or an age (``1h``, ``7d``)."""
    text = text.strip()
    now = now or datetime.now(UTC)
    age = parse_duration(text)
    if isinstance(age, timedelta):
        return now - age
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"{what} {text!r} is neither an ISO time (2024-05-01T10:00) nor an age (30m, 1h, 2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a person's wall-clock time
    return moment


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Filters for reading history; newest first, ``before`` is the page cursor (an id)."""

    key_label: str | None = None
    field: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    before: int | None = None

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

    @classmethod
    def from_params(
        cls, params: Mapping[str, str | None], *, now: datetime | None = None
    ) -> HistoryQuery:
        """Build from text (CLI options or query parameters); bad input raises one clear line."""

        def text(name: str) -> str | None:
            value = params.get(name)
            return value.strip() if value is not None and value.strip() else None

        def number(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            if not value.isdigit():
                raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
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
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": filters.limit + 1}
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
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    statement = sql.SQL(
        "SELECT id, batch_id, source, changed_at, applied_at, key::text, key_label, field, "
        "old_value::text, new_value::text FROM {table}{where} ORDER BY id DESC LIMIT %(limit)s"
    ).format(table=sql.Identifier(schema, HISTORY_TABLE), where=where)
    try:
        with conn.transaction():
            rows = conn.execute(with_parameters(statement, [schema]), params).fetchall()
    except pg_errors.UndefinedTable:
        raise SchemaError(_not_set_up(schema)) from None
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", "reading the sync history") from None
    entries = tuple(_entry(row) for row in rows[: filters.limit])
    more = len(rows) > filters.limit
    return HistoryPage(entries, entries[-1].id if more and entries else None)


def _entry(row: Sequence[Any]) -> HistoryEntry:
    (id_, batch_id, source, changed_at, applied_at, key, label, field, old, new) = row
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
    )


# Retention.


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows older than ``cutoff`` were deleted, in how many statements."""

    cutoff: datetime
    deleted: int
    statements: int
    complete: bool  # False when it stopped at max_statements with old rows maybe left


def prune(
    conn: Connection,
    schema: str,
    retention: timedelta,
    *,
    batch_rows: int = PRUNE_BATCH_ROWS,
    max_statements: int | None = None,
    now: datetime | None = None,
) -> PruneResult:
    """Delete history older than ``retention``, ``batch_rows`` per short transaction."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    cutoff = (now or datetime.now(UTC)) - retention
    statement = with_parameters(_statement("history/prune.sql", schema), [schema])
    deleted = statements = 0
    try:
        while max_statements is None or statements < max_statements:
            with conn.transaction():
                count = conn.execute(
                    statement, {"cutoff": cutoff, "batch_rows": batch_rows}
                ).rowcount
            statements += 1
            deleted += max(count, 0)
            if count < batch_rows:
                return PruneResult(cutoff, deleted, statements, True)
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", "pruning the sync history") from None
    return PruneResult(cutoff, deleted, statements, False)


# The daemon's and the CLI's handle on all of it.


class History:
    """History as configured: setup, the apply hook, reads and periodic pruning.

    With ``history_enabled=false`` every method is a no-op that touches no
    database: ``hook()`` returns None, so ``converge_keys`` writes nothing extra.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        prune_interval: timedelta = PRUNE_INTERVAL,
    ) -> None:
        self.enabled = settings.history_enabled
        self.schema = settings.history_schema
        self.retention = settings.history_retention
        self.prune_interval = prune_interval
        self._clock = clock
        self._last_prune: float | None = None
        self.rows_recorded = 0
        self.last_prune: PruneResult | None = None

    def setup(self, conn: Connection) -> SetupResult | None:
        return setup(conn, self.schema) if self.enabled else None

    def describe(self) -> dict[str, Any]:
        """For ``/status``: whether history is kept, where, and what retention did last."""
        if not self.enabled:
            return {"enabled": False}
        last = self.last_prune
        return {
            "enabled": True,
            "schema": self.schema,
            "retention_seconds": self.retention.total_seconds(),
            "rows_recorded": self.rows_recorded,
            "last_prune": None
            if last is None
            else {"cutoff": last.cutoff.isoformat(), "deleted": last.deleted},
        }

    def check(self, conn: Connection) -> None:
        """Fail with one clear line unless the schema is set up at this release's version."""
        if self.enabled:
            _require_current(conn, self.schema)

    def hook(
        self, *, changed_at: float | datetime | None = None, after: AppliedHook | None = None
    ) -> AppliedHook | None:
        """The ``on_applied`` hook for one batch of changes produced at ``changed_at``.

        Every call of the returned hook is one sandbox transaction, so it gets a
        batch id of its own (a bisected batch gives each committed part its own).
        ``after`` runs first in the same transaction (a leadership check, say).
        """
        if not self.enabled:
            return after
        schema = self.schema

        def on_applied(
            conn: Connection, results: Sequence[JobMappingResult], source: Source
        ) -> None:
            if after is not None:
                after(conn, results, source)
            self.rows_recorded += record(conn, schema, results, source, changed_at=changed_at)

        return on_applied

    def read(self, conn: Connection, filters: HistoryQuery) -> HistoryPage:
        if not self.enabled:
            raise ConfigurationError("history is disabled (PROPAGATOR_HISTORY_ENABLED=false)")
        return query(conn, self.schema, filters)

    def prune_due(self) -> bool:
        if not self.enabled:
            return False
        return (
            self._last_prune is None
            or self._clock() - self._last_prune >= self.prune_interval.total_seconds()
        )

    def prune(
        self, conn: Connection, *, max_statements: int | None = None, force: bool = False
    ) -> PruneResult | None:
        """Prune when due (or ``force``); at most ``max_statements`` deletes per call."""
        if not self.enabled or not (force or self.prune_due()):
            return None
        result = prune(conn, self.schema, self.retention, max_statements=max_statements)
        self._last_prune = None if not result.complete else self._clock()
        self.last_prune = result
        return result


class HistoryReader:
    """History reads for the HTTP endpoint: one connection of its own, one read at a time.

    Kept apart from the applier's connections so a page refresh never waits
    behind a batch; a broken connection is dropped and reopened on the next read.
    """

    def __init__(self, history: History, settings: Settings) -> None:
        self.history = history
        self.settings = settings
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def read(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        filters = HistoryQuery.from_params(params)
        with self._lock:
            try:
                return self.history.read(self._connection(), filters).as_dict()
            except PropagatorError:
                self._drop()
                raise

    async def __call__(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        return await asyncio.to_thread(self.read, params)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self.settings.sandbox_url(),
                "sandbox",
                autocommit=True,
                connect_timeout=self.settings.connect_timeout.total_seconds(),
                statement_timeout=min(self.settings.statement_timeout, _READ_TIMEOUT),
                application_name="propagator history",
            )
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
