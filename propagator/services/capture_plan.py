"""What logical capture wants on one production database, against what is there.

One publication (``logical_publication``) and one slot (``logical_slot``) serve
a production database: the publication lists exactly the tables the selected
mappings read there (the daemon refuses any other), each with a column list on
PostgreSQL 15 and later. The list is the columns the triggers would watch (keys,
mapped columns, the production filter's columns: ``trigger_columns`` computes
them for both captures) plus the replica identity's columns, which PostgreSQL
requires of a column list in a publication that publishes UPDATE and DELETE.
A table whose identity is FULL publishes whole rows (a list would have to name
every column); before 15 every table does.

``read_plan`` reads everything once; the install, the status and ``check`` all
judge the same ``LogicalPlan``, so they never disagree about what is current.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from psycopg import sql

from propagator.adapters.connections import Connection
from propagator.adapters.publication import (
    PUBLISHED_EVENTS,
    Publication,
    PublishedTable,
    ReplicaIdentity,
    ServerFacts,
    publication_statements,
    read_publication,
    read_replica_identity,
    read_server_facts,
)
from propagator.adapters.slots import PLUGIN, SlotState, read_slot_state
from propagator.adapters.tables import describe_table
from propagator.core.redact import mask_url
from propagator.errors import SchemaError, SettingsMismatchError
from propagator.services.trigger_columns import with_filter_columns
from propagator.services.trigger_spec import trigger_spec
from propagator.settings import Settings, WatchedTable

__all__ = [
    "MIN_SERVER_VERSION",
    "LogicalPlan",
    "LogicalTarget",
    "TablePlan",
    "logical_targets",
    "publication_drift",
    "read_plan",
    "server_problems",
    "slot_conflict",
    "slot_problems",
]

MIN_SERVER_VERSION = 130000
"""PostgreSQL 13: the first to report a slot's ``wal_status`` and bound its WAL."""

_SLOT_SETTING = "logical_slot (PROPAGATOR_LOGICAL_SLOT)"
_PUBLICATION_SETTING = "logical_publication (PROPAGATOR_LOGICAL_PUBLICATION)"


@dataclass(frozen=True, slots=True)
class LogicalTarget:
    """One production database and the selected tables on it: one publication, one slot."""

    tables: tuple[WatchedTable, ...]

    @property
    def settings(self) -> Settings:
        """How to connect: the first mapping's (publication and slot are top-level settings)."""
        return self.tables[0].mappings[0]

    @property
    def publication(self) -> str:
        return self.settings.logical_publication

    @property
    def slot(self) -> str:
        return self.settings.logical_slot

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for table in self.tables for name in table.names))

    @property
    def label(self) -> str:
        """The database's masked URL and the mappings it serves, for a heading."""
        label = "mapping" if len(self.names) == 1 else "mappings"
        return f"{mask_url(self.tables[0].production_url)} ({label}: {', '.join(self.names)})"


def logical_targets(tables: Sequence[WatchedTable]) -> tuple[LogicalTarget, ...]:
    """The watched tables grouped by production database, in the order first named."""
    grouped: dict[str, list[WatchedTable]] = {}
    for table in tables:
        grouped.setdefault(table.production_url, []).append(table)
    return tuple(LogicalTarget(tuple(group)) for group in grouped.values())


@dataclass(frozen=True, slots=True)
class TablePlan:
    """One table: what the triggers would watch, its identity, its wanted publication entry."""

    table: WatchedTable
    watched_columns: tuple[str, ...] = ()
    identity: ReplicaIdentity | None = None
    entry: PublishedTable | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class LogicalPlan:
    """Everything read from one production database, and what install would make of it."""

    target: LogicalTarget
    facts: ServerFacts
    tables: tuple[TablePlan, ...]
    publication: Publication | None
    slot: SlotState | None

    @property
    def wanted(self) -> tuple[PublishedTable, ...]:
        return tuple(t.entry for t in self.tables if t.entry is not None)

    @property
    def table_problems(self) -> tuple[str, ...]:
        return tuple(t.problem for t in self.tables if t.problem is not None)

    def statements(self) -> tuple[sql.Composed, ...]:
        """The publication statements install runs (CREATE, or ALTER ... SET TABLE)."""
        return publication_statements(
            self.target.publication, self.wanted, exists=self.publication is not None
        )


def _identity_problem(identity: ReplicaIdentity) -> str | None:
    unusable = identity.unusable
    if not unusable:
        return None
    part = unusable[0]
    return (
        f"production table {part.table} has no usable replica identity "
        f"(REPLICA IDENTITY {part.describe()}): once it is in a publication PostgreSQL "
        "refuses UPDATE and DELETE on it; add a primary key, or ALTER TABLE "
        f"{part.table} REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns> "
        "(or REPLICA IDENTITY FULL)"
    )


def _plan_table(conn: Connection, table: WatchedTable, facts: ServerFacts) -> TablePlan:
    """The table's watched columns checked against the catalog, and its publication entry."""
    try:
        spec = with_filter_columns(conn, trigger_spec(table))
        described = describe_table(conn, spec.table, "production")
        for column in spec.key_columns:
            described.column(column, "key")
        for column in spec.value_columns:
            described.column(column, "mapped")
        identity = read_replica_identity(conn, spec.table)
    except SchemaError as error:
        return TablePlan(table, problem=str(error))
    problem = _identity_problem(identity)
    columns = None
    if facts.column_lists and not identity.full:
        columns = tuple(dict.fromkeys((*spec.watched_columns, *identity.columns)))
    entry = None if problem else PublishedTable(identity.table, columns)
    return TablePlan(table, spec.watched_columns, identity, entry, problem)


def read_plan(conn: Connection, target: LogicalTarget) -> LogicalPlan:
    """Read the server, each table, the publication and the slot; judge nothing yet."""
    facts = read_server_facts(conn)
    if facts.server_version_num < MIN_SERVER_VERSION:
        raise SettingsMismatchError(
            f"production server is PostgreSQL {facts.version}; logical capture needs "
            "PostgreSQL 13 or later (capture = notify works on any version)"
        )
    tables = tuple(_plan_table(conn, table, facts) for table in target.tables)
    publication = read_publication(conn, target.publication, column_lists=facts.column_lists)
    slot = read_slot_state(conn, target.slot)
    return LogicalPlan(target, facts, tables, publication, slot)


def server_problems(facts: ServerFacts) -> Iterator[str]:
    """What keeps the server or the role from logical capture at all."""
    if facts.wal_level != "logical":
        yield (
            f"production wal_level is {facts.wal_level}; logical capture needs wal_level = "
            "logical (ALTER SYSTEM SET wal_level = logical, then restart the server)"
        )
    if not (facts.superuser or facts.replication):
        yield (
            f"role {facts.role} lacks the REPLICATION attribute, which reading a replication "
            f"slot needs: ALTER ROLE {facts.role} REPLICATION"
        )


def _columns_text(columns: tuple[str, ...] | None) -> str:
    return "whole rows" if columns is None else "columns " + ", ".join(columns)


def _table_drift(publication: Publication, wanted: Sequence[PublishedTable]) -> Iterator[str]:
    for entry in wanted:
        current = publication.table(entry.table)
        if current is None:
            yield f"publication {publication.name} does not publish {entry.table}"
            continue
        same = (current.columns is None) == (entry.columns is None) and set(
            current.columns or ()
        ) == set(entry.columns or ())
        if not same:
            yield (
                f"publication {publication.name} publishes {_columns_text(current.columns)} "
                f"of {entry.table}; capture needs {_columns_text(entry.columns)}"
            )
    names = {entry.table for entry in wanted}
    for published in publication.tables:
        if published.table not in names:
            yield (
                f"publication {publication.name} also publishes {published.table}, which "
                "no selected mapping reads"
            )
    for schema in publication.schemas:
        yield f"publication {publication.name} publishes every table of schema {schema}"


def publication_drift(plan: LogicalPlan) -> list[str]:
    """How the publication differs from what install makes of it (empty: current)."""
    publication = plan.publication
    if publication is None:
        return [f"publication {plan.target.publication} does not exist"]
    if publication.all_tables:
        return [
            f"publication {publication.name} is FOR ALL TABLES, which capture cannot narrow: "
            f"drop it or set {_PUBLICATION_SETTING} to another name"
        ]
    drift = list(_table_drift(publication, plan.wanted))
    if publication.events != PUBLISHED_EVENTS:
        drift.append(
            f"publication {publication.name} publishes {', '.join(publication.events) or 'nothing'}"
            f"; capture needs {', '.join(PUBLISHED_EVENTS)}"
        )
    if not publication.via_root:
        drift.append(
            f"publication {publication.name} publishes partitions' changes under the "
            "partitions' names (publish_via_partition_root is off)"
        )
    return drift


def slot_conflict(slot: SlotState, database: str) -> str | None:
    """Why an existing slot of that name is not one propagator may use (or drop)."""
    if slot.slot_type != "logical" or slot.plugin != PLUGIN:
        kind = (
            f"a {slot.slot_type} slot" if slot.slot_type != "logical" else f"plugin {slot.plugin}"
        )
        return (
            f"replication slot {slot.name} exists with {kind}, not pgoutput: drop it or set "
            f"{_SLOT_SETTING} to another name"
        )
    if slot.database != database:
        return (
            f"replication slot {slot.name} belongs to database {slot.database}; slot names "
            f"are server-wide, so each production database needs its own {_SLOT_SETTING}"
        )
    return None


def slot_problems(plan: LogicalPlan) -> list[str]:
    """What is wrong with the slot as the daemon would read it (empty: healthy)."""
    slot = plan.slot
    if slot is None:
        return [f"replication slot {plan.target.slot} does not exist"]
    conflict = slot_conflict(slot, plan.facts.database)
    if conflict:
        return [conflict]
    if slot.lost:
        return [
            f"replication slot {slot.name} lost WAL it needed (wal_status lost): changes "
            "were missed; install (or the daemon) recreates it, then reconcile"
        ]
    if slot.wal_status == "unreserved":
        return [
            f"replication slot {slot.name} retains more WAL than max_slot_wal_keep_size "
            "(wal_status unreserved): it is lost at the next checkpoint unless read"
        ]
    return []
