"""The production side of logical capture: server facts, replica identity, the publication.

Synchronous psycopg, for the command line (``propagator capture``, ``check``)
and anything else that installs or inspects logical capture. The SQL lives in
``sql/logical/``; identifiers go through ``psycopg.sql.Identifier`` and values
are parameters. The replication slot itself is ``adapters.slots``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.tables import table_identifier
from propagator.core.identifiers import QualifiedName
from propagator.errors import SchemaError, TransientError
from propagator.sql import load_sql

__all__ = [
    "COLUMN_LISTS_FROM",
    "PUBLISHED_EVENTS",
    "Publication",
    "PublishedTable",
    "RelationIdentity",
    "ReplicaIdentity",
    "ServerFacts",
    "apply_publication",
    "drop_publication",
    "publication_statements",
    "read_publication",
    "read_replica_identity",
    "read_server_facts",
    "server_facts",
]

COLUMN_LISTS_FROM: Final = 150000
"""``server_version_num`` from which a publication may list a table's columns."""

PUBLISHED_EVENTS: Final = ("insert", "update", "delete")
"""What the publication publishes: the events the triggers announce (never truncate)."""

_OPTIONS = sql.SQL("publish = {}, publish_via_partition_root = true").format(
    sql.Literal(", ".join(PUBLISHED_EVENTS))
)
_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What logical capture needs of the server and of the role (``server_facts.sql``)."""

    server_version_num: int
    wal_level: str
    max_slot_wal_keep_size: str | None
    max_slot_wal_keep_size_mb: int | None
    max_replication_slots: int
    used_slots: int
    role: str
    superuser: bool
    replication: bool
    database: str
    can_create: bool

    @property
    def version(self) -> str:
        """``18.6`` from 180006 (``9.6.24`` style numbers are never seen: 13 is required)."""
        major, minor = divmod(self.server_version_num, 10000)
        return f"{major}.{minor}"

    @property
    def column_lists(self) -> bool:
        return self.server_version_num >= COLUMN_LISTS_FROM

    @property
    def unbounded(self) -> bool:
        """A slot may retain WAL without limit (``max_slot_wal_keep_size = -1``)."""
        return self.max_slot_wal_keep_size_mb is not None and self.max_slot_wal_keep_size_mb < 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "server_version_num": self.server_version_num,
            "wal_level": self.wal_level,
            "max_slot_wal_keep_size": self.max_slot_wal_keep_size,
            "max_replication_slots": self.max_replication_slots,
            "used_slots": self.used_slots,
            "role": self.role,
            "superuser": self.superuser,
            "replication": self.replication,
            "database": self.database,
        }


@dataclass(frozen=True, slots=True)
class RelationIdentity:
    """The replica identity of one table or partition (``replica_identity.sql``)."""

    table: QualifiedName
    kind: str
    identity: str
    columns: tuple[str, ...]
    owned: bool

    @property
    def partitioned(self) -> bool:
        """A partitioned table holds no rows: only its partitions' identities matter."""
        return self.kind == "p"

    @property
    def full(self) -> bool:
        return self.identity == "f"

    @property
    def usable(self) -> bool:
        """UPDATE and DELETE stay possible once the table is published."""
        return self.partitioned or self.full or (self.identity in "di" and bool(self.columns))

    def describe(self) -> str:
        """``DEFAULT (primary key id)``, ``FULL``, ``DEFAULT without a primary key``..."""
        name = _IDENTITY_NAMES.get(self.identity, self.identity)
        if self.identity == "d":
            columns = ", ".join(self.columns)
            return f"{name} (primary key {columns})" if columns else f"{name} without a primary key"
        if self.identity == "i":
            columns = ", ".join(self.columns)
            return f"{name} ({columns})" if columns else f"{name} whose index was dropped"
        return name


@dataclass(frozen=True, slots=True)
class ReplicaIdentity:
    """A production table's replica identity and its partitions', the table first."""

    relations: tuple[RelationIdentity, ...]

    @property
    def table(self) -> QualifiedName:
        """The table's schema-qualified name as the catalog resolved it."""
        return self.relations[0].table

    @property
    def full(self) -> bool:
        """Some part is REPLICA IDENTITY FULL: a column list would have to name every column."""
        return any(r.full for r in self.relations)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every identity column, the table's first: a column list must include them."""
        return tuple(dict.fromkeys(c for r in self.relations for c in r.columns))

    @property
    def unusable(self) -> tuple[RelationIdentity, ...]:
        return tuple(r for r in self.relations if not r.usable)

    @property
    def owned(self) -> bool:
        return self.relations[0].owned

    def describe(self) -> str:
        """The table's identity, and its partitions' when it has any."""
        root, *partitions = self.relations
        if not partitions:
            return root.describe()
        kinds = ", ".join(dict.fromkeys(p.describe() for p in partitions))
        return f"{root.describe()}; partitions {kinds}"


@dataclass(frozen=True, slots=True)
class PublishedTable:
    """One table of a publication and its column list (None: whole rows)."""

    table: QualifiedName
    columns: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Publication:
    """A publication as the catalog has it (``publication*.sql``)."""

    name: str
    owner: str
    owned: bool
    all_tables: bool
    insert: bool
    update: bool
    delete: bool
    truncate: bool
    via_root: bool
    tables: tuple[PublishedTable, ...]
    schemas: tuple[str, ...]

    @property
    def events(self) -> tuple[str, ...]:
        flags = (self.insert, self.update, self.delete, self.truncate)
        return tuple(e for e, on in zip((*PUBLISHED_EVENTS, "truncate"), flags, strict=True) if on)

    def table(self, name: QualifiedName) -> PublishedTable | None:
        return next((t for t in self.tables if t.table == name), None)


def _read(conn: Connection, what: str, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        with conn.transaction():
            return conn.execute(query, params).fetchall()
    except psycopg.Error as error:
        raise translate_error(error, "production", what) from None


def read_server_facts(conn: Connection) -> ServerFacts:
    """The server's settings and the connected role's attributes."""
    rows = _read(conn, "reading the server settings", load_sql("logical/server_facts.sql"), {})
    (row,) = rows
    return server_facts(row)


def server_facts(row: Sequence[Any]) -> ServerFacts:
    """``ServerFacts`` from the row of ``logical/server_facts.sql`` (read by either driver)."""
    return ServerFacts(
        server_version_num=int(row[0]),
        wal_level=str(row[1]),
        max_slot_wal_keep_size=None if row[2] is None else str(row[2]),
        max_slot_wal_keep_size_mb=None if row[3] is None else int(row[3]),
        max_replication_slots=int(row[4]),
        used_slots=int(row[5]),
        role=str(row[6]),
        superuser=bool(row[7]),
        replication=bool(row[8]),
        database=str(row[9]),
        can_create=bool(row[10]),
    )


def read_replica_identity(conn: Connection, table: QualifiedName) -> ReplicaIdentity:
    """The table's replica identity, or a ``SchemaError`` when the table does not exist."""
    rows = _read(
        conn,
        f"reading the replica identity of {table}",
        load_sql("logical/replica_identity.sql"),
        {"table": table_identifier(table).as_string(None)},
    )
    if not rows:
        raise SchemaError(f"the production table {table} does not exist")
    return ReplicaIdentity(
        tuple(
            RelationIdentity(
                table=QualifiedName(str(schema), str(name)),
                kind=str(kind),
                identity=str(identity),
                columns=tuple(str(c) for c in columns),
                owned=bool(owned),
            )
            for schema, name, kind, identity, columns, owned in rows
        )
    )


def read_publication(conn: Connection, name: str, *, column_lists: bool) -> Publication | None:
    """The publication, or None; ``column_lists``: the server has them (15 and later)."""
    what = f"reading publication {name!r}"
    params = {"publication": name}
    found = _read(conn, what, load_sql("logical/publication.sql"), params)
    if not found:
        return None
    tables_sql = "publication_tables.sql" if column_lists else "publication_tables_14.sql"
    tables = _read(conn, what, load_sql(f"logical/{tables_sql}"), params)
    schemas = _read(conn, what, load_sql("logical/publication_schemas.sql"), params)
    row = found[0]
    return Publication(
        name=str(row[0]),
        owner=str(row[1]),
        owned=bool(row[2]),
        all_tables=bool(row[3]),
        insert=bool(row[4]),
        update=bool(row[5]),
        delete=bool(row[6]),
        truncate=bool(row[7]),
        via_root=bool(row[8]),
        tables=tuple(
            PublishedTable(
                QualifiedName(str(schema), str(table)),
                None if columns is None else tuple(str(c) for c in columns),
            )
            for _, schema, table, columns in tables
        ),
        schemas=tuple(str(s) for (s,) in schemas) if column_lists else (),
    )


def _table_list(tables: Sequence[PublishedTable]) -> sql.Composable:
    items: list[sql.Composable] = []
    for entry in tables:
        item: sql.Composable = table_identifier(entry.table)
        if entry.columns is not None:
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in entry.columns)
            item = sql.SQL("{} ({})").format(item, columns)
        items.append(item)
    return sql.SQL(",\n    ").join(items)


def publication_statements(
    name: str, tables: Sequence[PublishedTable], *, exists: bool
) -> tuple[sql.Composed, ...]:
    """CREATE the publication, or bring an existing one to exactly ``tables`` and the events."""
    if not tables:
        raise ValueError("a publication needs at least one table")
    publication = sql.Identifier(name)
    listed = _table_list(tables)
    if not exists:
        return (
            sql.SQL("CREATE PUBLICATION {} FOR TABLE\n    {}\n    WITH ({})").format(
                publication, listed, _OPTIONS
            ),
        )
    return (
        sql.SQL("ALTER PUBLICATION {} SET TABLE\n    {}").format(publication, listed),
        sql.SQL("ALTER PUBLICATION {} SET ({})").format(publication, _OPTIONS),
    )


def _run(conn: Connection, statements: Sequence[sql.Composed], what: str) -> None:
    """One transaction; a table lock held elsewhere is worth retrying, not a refusal."""
    try:
        with conn.transaction():
            conn.execute(_LOCK_TIMEOUT)
            for statement in statements:
                conn.execute(statement)
    except psycopg.errors.LockNotAvailable:
        raise TransientError(
            f"could not lock a production table {what} within 5 s "
            "(a long transaction holds it); try again"
        ) from None
    except psycopg.Error as error:
        raise translate_error(error, "production", what) from None


def apply_publication(conn: Connection, statements: Sequence[sql.Composed], name: str) -> None:
    """Run ``publication_statements`` in one transaction."""
    _run(conn, statements, f"installing publication {name!r}")


def drop_publication(conn: Connection, name: str) -> None:
    """Drop the publication if it exists (the tables and their rows are untouched)."""
    statement = sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name))
    _run(conn, (statement,), f"dropping publication {name!r}")
