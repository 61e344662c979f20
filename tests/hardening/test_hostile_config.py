"""Hostile configuration: names and filters written to break out of SQL.

Schema, table and column names with spaces, quotes, capitals, unicode and SQL
fragments either work end to end (reconcile, triggers, the daemon) or are
refused with one clear line; they are never executed. A production filter runs
in a READ ONLY transaction, so even a data-modifying one cannot write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg import sql

from tests.hardening.support import daemon_process, pair_env
from tests.helpers import Database, DatabasePair, run_cli, wait_until

# '%s', '%b' and '%%' too: psycopg reads a '%' anywhere in a statement sent with
# parameters as a placeholder, names included.
HOSTILE_COLUMN = 'fab %s order"; drop table jobs; --'
KEY_COLUMN = "Jöb Nr %b"
PRODUCTION_SCHEMA = "my schema"
SANDBOX_SCHEMA = "Sändbox'; DROP SCHEMA public CASCADE; --"
TABLE = 'Odd "Jobs" 100%%'
HISTORY_SCHEMA = "sync %t history"


def quoted(*parts: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def create_hostile_table(database: Database, schema: str) -> None:
    database.execute(
        sql.SQL(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} "
            "({key} int, release text, {value} numeric, note text, UNIQUE ({key}, release))"
        )
        .format(
            schema=sql.Identifier(schema),
            table=sql.Identifier(TABLE),
            key=sql.Identifier(KEY_COLUMN),
            value=sql.Identifier(HOSTILE_COLUMN),
        )
        .as_string(None)
    )


def hostile_env(databases: DatabasePair, **extra: str) -> dict[str, str]:
    return pair_env(
        databases,
        PROPAGATOR_PRODUCTION_TABLE=quoted(PRODUCTION_SCHEMA, TABLE),
        PROPAGATOR_SANDBOX_TABLE=quoted(SANDBOX_SCHEMA, TABLE),
        PROPAGATOR_KEY_COLUMNS=json.dumps([KEY_COLUMN, "release"]),
        PROPAGATOR_FIELD_MAPPINGS=json.dumps([{"source": HOSTILE_COLUMN}]),
        PROPAGATOR_CHANNEL="Odd Channel'; NOTIFY x; 5%s --",
        PROPAGATOR_HISTORY_SCHEMA=HISTORY_SCHEMA,
        **extra,
    )


def values(database: Database, schema: str) -> list[tuple[object, ...]]:
    query = sql.SQL("SELECT {key}, {value} FROM {schema}.{table} ORDER BY 1").format(
        key=sql.Identifier(KEY_COLUMN),
        value=sql.Identifier(HOSTILE_COLUMN),
        schema=sql.Identifier(schema),
        table=sql.Identifier(TABLE),
    )
    return database.fetchall(query.as_string(None))


def untouched(databases: DatabasePair) -> bool:
    """The seed ``jobs`` table and the public schema still exist on both sides."""
    return all(
        database.scalar("SELECT to_regclass('public.jobs') IS NOT NULL")
        for database in (databases.production, databases.sandbox)
    )


def assert_refused(result: object, *, code: int = 2) -> str:
    stdout, stderr = result.stdout, result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, stdout + stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.slow
def test_hostile_names_work_through_reconcile_triggers_and_the_daemon(
    databases: DatabasePair, tmp_path: Path, measure: Callable[..., float]
) -> None:
    """Quoted, unicode, SQL-laden names: reconcile --apply, triggers install, daemon all work."""
    create_hostile_table(databases.production, PRODUCTION_SCHEMA)
    create_hostile_table(databases.sandbox, SANDBOX_SCHEMA)
    for job in range(1, 6):
        insert = sql.SQL("INSERT INTO {} VALUES ({}, 'A', {}, 'n')")
        for database, schema, value in (
            (databases.production, PRODUCTION_SCHEMA, job),
            (databases.sandbox, SANDBOX_SCHEMA, 0),
        ):
            statement = insert.format(
                sql.Identifier(schema, TABLE), sql.Literal(job), sql.Literal(value)
            )
            database.execute(statement.as_string(None))
    env = hostile_env(databases)

    checked = run_cli(["check"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    applied = run_cli(["reconcile", "--apply"], env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert values(databases.sandbox, SANDBOX_SCHEMA) == values(
        databases.production, PRODUCTION_SCHEMA
    )
    installed = run_cli(["triggers", "install"], env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    status = run_cli(["triggers", "status", "--check"], env)
    assert status.returncode == 0, status.stdout + status.stderr

    with daemon_process(env, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        started = time.monotonic()
        update = sql.SQL("UPDATE {} SET {} = 4242 WHERE {} = 3").format(
            sql.Identifier(PRODUCTION_SCHEMA, TABLE),
            sql.Identifier(HOSTILE_COLUMN),
            sql.Identifier(KEY_COLUMN),
        )
        databases.production.execute(update.as_string(None))
        wait_until(
            lambda: (3, 4242) in values(databases.sandbox, SANDBOX_SCHEMA),
            what="the change through hostile names",
        )
        measure("a change propagated through hostile names", time.monotonic() - started)
        assert daemon.stop() == 0
    history = run_cli(["history", "--format", "json"], env)
    assert history.returncode == 0, history.stdout + history.stderr
    entries = json.loads(history.stdout)["entries"]
    recorded = [(entry["field"], entry["new_json"]) for entry in entries]
    assert (HOSTILE_COLUMN, "4242") in recorded, recorded
    assert untouched(databases)
    assert databases.sandbox.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("PROPAGATOR_PRODUCTION_TABLE", '"unterminated', "unterminated quote"),
        ("PROPAGATOR_PRODUCTION_TABLE", "a.b.c", "more than two parts"),
        ("PROPAGATOR_PRODUCTION_TABLE", "jobs; drop table jobs", "not a valid name"),
        ("PROPAGATOR_SANDBOX_TABLE", "x" * 64, "63-byte"),
        ("PROPAGATOR_KEY_COLUMNS", '["job", ""]', "must not be empty"),
        ("PROPAGATOR_CHANNEL", "c\x01" * 40, "63-byte"),
        ("PROPAGATOR_PRODUCTION_FILTER", "true; DROP TABLE jobs", "no ';'"),
    ],
)
def test_unusable_names_are_refused_in_one_line(
    databases: DatabasePair, variable: str, value: str, needle: str
) -> None:
    """A name PostgreSQL would truncate or cannot parse is refused naming its variable: exit 2."""
    result = run_cli(["reconcile", "--apply"], pair_env(databases, **{variable: value}))
    line = assert_refused(result)
    assert variable in line
    assert needle in line
    assert untouched(databases)


@pytest.mark.parametrize(
    ("column", "side"),
    [(HOSTILE_COLUMN, "production"), ("fab_order; DROP TABLE jobs", "production")],
)
def test_a_hostile_column_that_does_not_exist_is_named_not_run(
    databases: DatabasePair, column: str, side: str
) -> None:
    """A mapped column that is missing is a schema error naming it, before any write."""
    env = pair_env(databases, PROPAGATOR_FIELD_MAPPINGS=json.dumps([{"source": column}]))
    line = assert_refused(run_cli(["reconcile", "--apply"], env))
    assert side in line
    assert column in line
    assert untouched(databases)


HOSTILE_FILTERS = {
    "data-modifying CTE": (
        "EXISTS (WITH gone AS (DELETE FROM public.jobs RETURNING 1) SELECT 1 FROM gone)"
    ),
    "sequence write": "nextval('public.jobs_id_seq') > 0",
    "function that writes": "pg_catalog.setval('public.jobs_id_seq', 999) > 0",
    "comment swallowing the rest": "true --",
    "unterminated comment": "true /*",
    "parenthesis closed early": "stage = 'none') OR (true",
    "parenthesis closed early, then a comment": "false) OR true --",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILTERS))
@pytest.mark.parametrize("method", ["checksum", "stream"])
def test_a_production_filter_cannot_write(databases: DatabasePair, name: str, method: str) -> None:
    """Each hostile filter fails cleanly (exit 2, one line) and nothing changes on either side."""
    databases.production.insert_jobs([(1, "A", 5), (2, "A", 6)])
    databases.sandbox.insert_jobs([(1, "A", 0), (2, "A", 0)])
    snapshot = "SELECT id, job, release, fab_order FROM jobs ORDER BY id"
    before = (databases.production.fetchall(snapshot), databases.sandbox.fetchall(snapshot))
    sequence = databases.production.scalar("SELECT last_value FROM jobs_id_seq")
    env = pair_env(databases, PROPAGATOR_PRODUCTION_FILTER=HOSTILE_FILTERS[name])
    result = run_cli(["reconcile", "--apply", "--method", method], env)
    line = assert_refused(result)
    assert line.startswith("propagator: error:"), line
    after = (databases.production.fetchall(snapshot), databases.sandbox.fetchall(snapshot))
    assert after == before
    assert databases.production.scalar("SELECT last_value FROM jobs_id_seq") == sequence
    assert untouched(databases)
