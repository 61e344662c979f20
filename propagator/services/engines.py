"""SQLAlchemy engines as the seed's API uses them: created, described, lending connections.

The seed's callers hand over engines; everything propagator does on them runs
on the psycopg 3 connection underneath (``driver_connection``), so the same
adapters serve the API and the command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy.engine import Engine

from propagator.adapters.connections import Connection
from propagator.adapters.tables import TableInfo, describe_table
from propagator.core.identifiers import parse_qualified_name
from propagator.core.redact import redact, register_secret, secrets_of_url
from propagator.errors import ConfigurationError, DatabaseUnavailableError, SchemaError, Side
from propagator.settings import Settings, load_settings, normalize_database_url

__all__ = [
    "RECONCILE_CONNECTIONS",
    "create_engine",
    "describe_engine",
    "driver_connection",
    "engines_from_settings",
    "require_columns",
    "table_info",
]


def create_engine(url: str, **options: Any) -> Engine:
    """A SQLAlchemy engine on the psycopg 3 driver, from any PostgreSQL URL spelling.

    ``postgres://`` (as Heroku-style providers hand out) and ``postgresql://``
    become ``postgresql+psycopg://``; the password is registered for redaction.
    """
    for secret in secrets_of_url(url):
        register_secret(secret)
    try:
        plain = normalize_database_url(url)
    except ValueError as error:
        raise ConfigurationError(f"invalid database URL: {error}") from None
    return sqlalchemy.create_engine(
        "postgresql+psycopg" + plain.removeprefix("postgresql"), **options
    )


# Connections a reconcile holds on each engine at once: one describing the table, one
# for the checksum snapshot, one for each of the two batches converging together.
RECONCILE_CONNECTIONS = 4


def engines_from_settings(settings: Settings | None = None) -> tuple[Engine, Engine]:
    """Production and sandbox engines from ``PRODUCTION_DATABASE_URL`` / ``SANDBOX_DATABASE_URL``.

    Each engine keeps a pool of ``pool_size`` connections (``PROPAGATOR_POOL_SIZE``),
    checked before use so a restarted server costs a reconnect, not an error.
    A reconcile holds up to ``RECONCILE_CONNECTIONS`` of them at once; a smaller
    pool may open the rest for the time it needs them, so it never waits on itself.
    """
    if settings is None:
        settings = load_settings()
    options = {
        "pool_size": settings.pool_size,
        "max_overflow": max(0, RECONCILE_CONNECTIONS - settings.pool_size),
        "pool_pre_ping": True,
    }
    return (
        create_engine(settings.production_url(), **options),
        create_engine(settings.sandbox_url(), **options),
    )


def describe_engine(engine: Engine) -> str:
    """Where the engine connects, for people: its URL with the password hidden."""
    return redact(engine.url.render_as_string(hide_password=True))


@contextmanager
def driver_connection(engine: Engine) -> Iterator[Connection]:
    """The engine's psycopg connection, returned to its pool (rolled back) afterwards."""
    try:
        raw = engine.raw_connection()
    except (sqlalchemy.exc.DBAPIError, psycopg.Error) as error:
        cause = getattr(error, "orig", None) or error
        lines = str(cause).strip().splitlines()
        reason = redact(lines[0] if lines else type(cause).__name__)
        raise DatabaseUnavailableError(
            f"cannot connect to the database at {describe_engine(engine)}: {reason}"
        ) from None
    try:
        connection = raw.driver_connection
        if not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                f"the engine for {describe_engine(engine)} does not use the psycopg 3 driver; "
                "create it with a postgresql+psycopg:// URL (propagator.services."
                "database_mapping.create_engine does this)"
            )
        yield connection
    finally:
        raw.close()


def table_info(conn: Connection, table: str, engine: Engine, side: Side) -> TableInfo:
    """The table's columns, with errors naming the table and the database (not a side)."""
    try:
        name = parse_qualified_name(table)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    try:
        return describe_table(conn, name, side)
    except SchemaError:
        raise SchemaError(
            f"table {name} does not exist in the database at {describe_engine(engine)}"
        ) from None


def require_columns(info: TableInfo, columns: Iterable[str], engine: Engine) -> None:
    """Every column exists in the table, or a ``SchemaError`` naming the missing ones."""
    missing = [column for column in dict.fromkeys(columns) if column not in info.columns]
    if missing:
        names = ", ".join(repr(column) for column in missing)
        raise SchemaError(
            f"column {names} does not exist in table {info.name} "
            f"of the database at {describe_engine(engine)}"
        )
