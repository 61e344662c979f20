"""The history schema: versioned migrations from ``sql/history/``, applied once, in order.

``propagator setup`` (and the daemon at start) creates the schema and applies
whatever migrations it lacks; readers and writers check the version first, so
an old schema fails with one line that says what to run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection
from propagator.adapters.postgres import translate_error, with_parameters
from propagator.core.vocabulary import SOURCES
from propagator.errors import SchemaError
from propagator.sql import load_sql

__all__ = [
    "HISTORY_SOURCES",
    "HISTORY_TABLE",
    "Migration",
    "SetupResult",
    "installed_version",
    "migrations",
    "not_set_up",
    "require_current",
    "schema_statement",
    "setup",
]

HISTORY_TABLE: Final = "sync_history"
HISTORY_SOURCES: Final[tuple[str, ...]] = SOURCES
"""The sources a history row can have, as the table's CHECK constraint lists them."""

_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_SETUP_LOCK_NAMESPACE = "propagator.history"


def _with_schema(text: str, schema: str) -> sql.Composed:
    return sql.SQL(text).format(schema=sql.Identifier(schema))


@functools.lru_cache(maxsize=32)
def schema_statement(path: str, schema: str) -> sql.Composed:
    """A statement file with the schema filled in, read once per process."""
    return _with_schema(load_sql(path), schema)


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
    try:
        with conn.transaction():
            conn.execute(
                load_sql("history/setup_lock.sql"),
                {"lock_name": f"{_SETUP_LOCK_NAMESPACE}.{schema}"},
            )
            created = not _schema_exists(conn, schema)
            if created:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(schema_statement("history/schema_version.sql", schema))
            applied = {
                int(row[0])
                for row in conn.execute(schema_statement("history/applied_versions.sql", schema))
            }
            pending = _apply_pending(conn, schema, applied)
            version = max(applied | {m.version for m in pending}, default=0)
    except psycopg.Error as error:
        raise translate_error(error, "sandbox", f"setting up history schema {schema}") from None
    return SetupResult(schema, version, pending, created)


def _apply_pending(conn: Connection, schema: str, applied: set[int]) -> tuple[Migration, ...]:
    """Apply, in order, each migration not in ``applied``, marking it applied as it goes."""
    mark_applied = with_parameters(schema_statement("history/mark_applied.sql", schema), [schema])
    pending = []
    for migration in migrations():
        if migration.version in applied:
            continue
        conn.execute(migration.statement(schema))
        conn.execute(mark_applied, {"version": migration.version, "name": migration.name})
        pending.append(migration)
    return tuple(pending)


def not_set_up(schema: str) -> str:
    """The one line that tells someone reading history before setup what to do."""
    return (
        f"history schema {schema} is not set up: run `propagator setup` "
        "(or set PROPAGATOR_HISTORY_ENABLED=false)"
    )


def require_current(conn: Connection, schema: str) -> None:
    """Fail with one clear line unless ``schema`` is at this release's version."""
    expected = len(migrations())
    found = installed_version(conn, schema)
    if found is None:
        raise SchemaError(not_set_up(schema))
    if found < expected:
        raise SchemaError(
            f"history schema {schema} is at version {found}, this release needs {expected}: "
            "run `propagator setup`"
        )
