"""The SQL ``propagator capture install`` would run for logical capture, printed for a DBA.

The column lists depend on each table's replica identity and the server's
version, and a list that leaves out an identity column would make PostgreSQL
refuse every UPDATE on the table once published: so the script is written from
the production catalog (read only), never guessed. It holds exactly what
install would run now: the publication in one transaction (CREATE, or ALTER ...
SET TABLE when it exists), then the slot, outside any transaction block.
Every name in a comment is escaped, so no name can end a comment line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg

from propagator.adapters.connections import Connection
from propagator.errors import SettingsMismatchError
from propagator.services.capture_plan import (
    LogicalPlan,
    LogicalTarget,
    TablePlan,
    publication_drift,
    read_plan,
    server_problems,
    slot_conflict,
)
from propagator.sql import load_sql

__all__ = ["install_script", "slot_statement"]


def _comment(text: str) -> str:
    """One ``--`` line: control characters (a newline would end the comment) escaped."""
    return "-- " + (text if text.isprintable() else json.dumps(text, ensure_ascii=False)[1:-1])


def slot_statement(conn: Connection, name: str, file: str = "create_slot.sql") -> str:
    """``sql/logical/<file>`` without its comments, the slot name bound as a literal."""
    text = load_sql(f"logical/{file}")
    statement = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return psycopg.ClientCursor(conn).mogrify(statement.strip(), {"slot": name}) + ";"


def _table_comment(table: TablePlan) -> str:
    assert table.entry is not None
    assert table.identity is not None
    watched = ", ".join(table.watched_columns)
    listed = "whole rows" if table.entry.columns is None else ", ".join(table.entry.columns)
    return _comment(
        f"  {table.entry.table}: publishes {listed} (watched: {watched}; replica identity "
        f"{table.identity.describe()})"
    )


def _header(plan: LogicalPlan) -> Iterator[str]:
    facts, target = plan.facts, plan.target
    yield _comment(
        f"propagator logical capture: publication {target.publication} and replication "
        f"slot {target.slot}"
    )
    yield _comment(f"on database {facts.database}, PostgreSQL {facts.version}.")
    if facts.column_lists:
        yield "-- Each table publishes the columns the daemon reads (keys, mapped columns, the"
        yield "-- production filter's columns) and its replica identity's, which PostgreSQL"
        yield "-- requires to publish UPDATE and DELETE; REPLICA IDENTITY FULL publishes"
        yield "-- whole rows."
    else:
        yield "-- PostgreSQL before 15 has no column lists: every table publishes whole rows."
    yield from (_table_comment(table) for table in plan.tables)
    for note in server_problems(facts):
        yield _comment(f"NOTE: {note}")
    if facts.unbounded:
        yield _comment(
            "NOTE: max_slot_wal_keep_size is -1 (unbounded): a slot nobody reads would retain "
            "WAL until the disk fills; set max_slot_wal_keep_size first"
        )


def _publication(conn: Connection, plan: LogicalPlan) -> Iterator[str]:
    if not publication_drift(plan):
        yield _comment(f"publication {plan.target.publication} is current: nothing to run")
        return
    yield "BEGIN;"
    yield "SET LOCAL lock_timeout = '5s';"
    for statement in plan.statements():
        yield statement.as_string(conn) + ";"
    yield "COMMIT;"


def _slot(conn: Connection, plan: LogicalPlan) -> Iterator[str]:
    slot, name = plan.slot, plan.target.slot
    if slot is not None and not slot.lost:
        yield _comment(
            f"replication slot {name} exists (pgoutput, wal_status {slot.wal_status}): "
            "nothing to run"
        )
        return
    if slot is not None:
        yield _comment(f"replication slot {name} lost WAL it needed: drop it, create it again")
        yield slot_statement(conn, name, "drop_slot.sql")
    yield "-- The slot, outside a transaction block: it waits for running transactions to end."
    yield slot_statement(conn, name)


def install_script(conn: Connection, target: LogicalTarget) -> str:
    """The statements install would run on this database now, with comments saying why.

    A table that cannot be published (missing, a missing column, no usable replica
    identity) or a slot of that name that is not propagator's is refused as install
    refuses it; what only the installing role needs (REPLICATION, wal_level) is a note.
    """
    plan = read_plan(conn, target)
    for problem in plan.table_problems:
        raise SettingsMismatchError(problem)
    drift = publication_drift(plan)
    if plan.publication is not None and plan.publication.all_tables:
        raise SettingsMismatchError(drift[0])
    conflict = None if plan.slot is None else slot_conflict(plan.slot, plan.facts.database)
    if conflict:
        raise SettingsMismatchError(conflict)
    lines = [*_header(plan), *_publication(conn, plan), *_slot(conn, plan)]
    return "\n".join(lines) + "\n"
