"""``propagator capture``: logical capture installed, inspected and removed, as a DBA sees it.

Production runs on the logical server (``wal_level = logical``); every test gets
its own slot name (slot names are server-wide) and the fixture drops its slots.
The command runs in this process through ``propagator.cli.main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from propagator.cli import main
from propagator.demo.embedded import binary_dir
from propagator.errors import ExitCode
from tests.conftest import TEMPLATE, Server, dedicated_logical_server
from tests.helpers import ORDERS_MAPPING, Database, DatabasePair, mappings_toml, wait_until

ORDERS_DDL = "CREATE TABLE public.orders (id integer PRIMARY KEY, status text, note text)"
PUBLISHED_COLUMNS = """
SELECT tablename::text, attnames::text[] FROM pg_catalog.pg_publication_tables
WHERE pubname = 'propagator' ORDER BY tablename
"""
SLOT = """
SELECT plugin::text, database::text, active, active_pid, restart_lsn::text
FROM pg_catalog.pg_replication_slots WHERE slot_name = %s
"""
CHANGE_KINDS = """
SELECT chr(get_byte(data, 0)) FROM pg_catalog.pg_logical_slot_peek_binary_changes(
    %s, NULL, NULL, 'proto_version', '1', 'publication_names', 'propagator')
"""


@dataclass
class Result:
    out: str
    err: str


@dataclass
class Cli:
    """``propagator ARGS`` in this process, with exactly the given environment."""

    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def __call__(self, env: dict[str, str], *args: str, expect: int = ExitCode.OK) -> Result:
        for name in os.environ:
            if name.startswith("PROPAGATOR_") or name.endswith("_DATABASE_URL"):
                self.monkeypatch.delenv(name)
        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        code = main(list(args))
        captured = self.capsys.readouterr()
        result = Result(captured.out, captured.err)
        assert "Traceback" not in result.err, result.err
        assert "internal error" not in result.err, result.err
        assert code == expect, result.out + result.err
        return result


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(monkeypatch, capsys)


def slot_of(pair: DatabasePair) -> str:
    return f"s_{pair.production.name}"


def logical_env(pair: DatabasePair, **extra: str) -> dict[str, str]:
    """Logical capture of ``pair`` with a slot of the test's own."""
    return {
        "PRODUCTION_DATABASE_URL": pair.production.url,
        "SANDBOX_DATABASE_URL": pair.sandbox.url,
        "PROPAGATOR_CAPTURE": "logical",
        "PROPAGATOR_LOGICAL_SLOT": slot_of(pair),
        **extra,
    }


def published(database: Database) -> dict[str, list[str]]:
    return {str(t): list(c) for t, c in database.fetchall(PUBLISHED_COLUMNS)}


def slot_row(database: Database, slot: str) -> tuple[Any, ...] | None:
    rows = database.fetchall(SLOT, (slot,))
    return rows[0] if rows else None


def one_line(result: Result) -> str:
    (line,) = result.err.strip().splitlines()
    assert line.startswith("propagator: error: "), line
    return line


def test_install_publishes_the_read_columns_with_the_identity_and_creates_the_slot(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """Keys, mapped and primary-key columns are published; production still updates and deletes."""
    slot = slot_of(logical_databases)
    lines = cli(logical_env(logical_databases), "capture", "install").out.splitlines()
    assert lines[0] == "✓ publication propagator created: public.jobs (job, release, fab_order, id)"
    assert lines[1].startswith(f"✓ replication slot {slot} created (pgoutput) at ")
    production = logical_databases.production
    assert published(production) == {"jobs": ["id", "job", "release", "fab_order"]}
    row = slot_row(production, slot)
    assert row is not None
    assert row[:2] == ("pgoutput", production.name)
    production.insert_jobs([(10001, "A", 5, "red", "cut")])
    production.execute("UPDATE jobs SET fab_order = 6")
    production.execute("DELETE FROM jobs")

    def changes() -> list[str]:
        # Peeking reads flushed WAL only; the test servers commit asynchronously.
        return [kind for (kind,) in production.fetchall(CHANGE_KINDS, (slot,)) if kind in "IUD"]

    wait_until(lambda: len(changes()) >= 3, what="three changes in the slot")
    assert changes() == ["I", "U", "D"]


def test_status_is_current_after_install_and_a_second_install_changes_nothing(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """status --check exits 0 with the slot's WAL in bytes; install again keeps the same slot."""
    env, slot = logical_env(logical_databases), slot_of(logical_databases)
    cli(env, "capture", "install")
    created = slot_row(logical_databases.production, slot)
    text = cli(env, "capture", "status", "--check").out
    assert f"✓ logical capture on database {logical_databases.production.name}: current" in text
    assert "wal_level logical, max_slot_wal_keep_size 1GB" in text
    assert "    public.jobs (id, job, release, fab_order)" in text
    assert f"  slot:          {slot} (pgoutput, inactive, wal_status reserved)" in text
    assert " bytes)\n" in text.split("retained WAL:", 1)[1]
    document = json.loads(cli(env, "capture", "status", "--json").out)
    assert document["current"] is True
    assert document["problems"] == []
    assert document["publication"]["tables"] == [
        {"table": "public.jobs", "columns": ["id", "job", "release", "fab_order"]}
    ]
    assert document["slot"]["plugin"] == "pgoutput"
    assert isinstance(document["slot"]["retained_bytes"], int)
    again = cli(env, "capture", "install").out.splitlines()
    assert (
        again[0] == "✓ publication propagator is current: public.jobs (job, release, fab_order, id)"
    )
    assert again[1].startswith(f"✓ replication slot {slot} already exists (pgoutput")
    assert slot_row(logical_databases.production, slot) == created


def test_uninstall_removes_slot_and_publication_and_status_check_fails_after(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """Both are dropped, a second uninstall is a no-op, and status --check then exits 1."""
    env, slot = logical_env(logical_databases), slot_of(logical_databases)
    cli(env, "capture", "install")
    removed = cli(env, "capture", "uninstall").out.splitlines()
    assert removed == [f"✓ replication slot {slot} dropped", "✓ publication propagator dropped"]
    assert slot_row(logical_databases.production, slot) is None
    assert published(logical_databases.production) == {}
    again = cli(env, "capture", "uninstall").out.splitlines()
    assert again == [
        f"✓ no replication slot {slot} (nothing to drop)",
        "✓ no publication propagator (nothing to drop)",
    ]
    text = cli(env, "capture", "status", "--check", expect=ExitCode.DIFFERENCES_FOUND).out
    assert "NOT current" in text
    assert "  ! publication propagator does not exist" in text
    assert f"  ! replication slot {slot} does not exist" in text


def test_a_changed_mapping_is_reported_and_install_brings_the_columns_up_to_date(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """A new mapped column and a filter's column: status names them, install publishes them."""
    cli(logical_env(logical_databases), "capture", "install")
    env = logical_env(
        logical_databases,
        PROPAGATOR_FIELD_MAPPINGS="fab_order,paint_color",
        PROPAGATOR_PRODUCTION_FILTER="stage <> 'done'",
    )
    stale = cli(env, "capture", "status", "--check", expect=ExitCode.DIFFERENCES_FOUND).out
    assert (
        "publication propagator publishes columns id, job, release, fab_order of public.jobs; "
        "capture needs columns job, release, fab_order, paint_color, stage, id"
    ) in stale
    updated = cli(env, "capture", "install").out.splitlines()[0]
    assert updated == (
        "✓ publication propagator updated: "
        "public.jobs (job, release, fab_order, paint_color, stage, id)"
    )
    assert published(logical_databases.production) == {
        "jobs": ["id", "job", "release", "fab_order", "paint_color", "stage"]
    }
    cli(env, "capture", "status", "--check")


def test_a_table_without_replica_identity_is_refused_and_full_identity_publishes_whole_rows(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """Identity NOTHING: exit 2 naming the table, nothing installed; FULL: no column list."""
    env, production = logical_env(logical_databases), logical_databases.production
    production.execute("ALTER TABLE jobs REPLICA IDENTITY NOTHING")
    line = one_line(cli(env, "capture", "install", expect=ExitCode.USAGE))
    assert "production table public.jobs has no usable replica identity" in line
    assert "REPLICA IDENTITY NOTHING" in line
    assert "refuses UPDATE and DELETE" in line
    assert production.scalar("SELECT count(*) FROM pg_publication") == 0
    assert slot_row(production, slot_of(logical_databases)) is None
    production.execute("ALTER TABLE jobs REPLICA IDENTITY FULL")
    installed = cli(env, "capture", "install").out
    assert "✓ publication propagator created: public.jobs (whole rows)" in installed
    assert production.scalar("SELECT prattrs IS NULL FROM pg_publication_rel") is True
    production.insert_jobs([(1, "A", 5)])
    production.execute("UPDATE jobs SET fab_order = 6")
    cli(env, "capture", "status", "--check")


def test_a_server_without_logical_wal_level_is_refused_naming_the_setting(
    databases: DatabasePair, cli: Cli
) -> None:
    """wal_level replica: one line saying how to change it, exit 2, nothing installed."""
    if databases.production.scalar("SHOW wal_level") == "logical":
        pytest.skip("the production test server already has wal_level = logical")
    env = logical_env(databases)
    line = one_line(cli(env, "capture", "install", expect=ExitCode.USAGE))
    assert line == (
        "propagator: error: production wal_level is replica; logical capture needs "
        "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the server)"
    )
    del env["PROPAGATOR_CAPTURE"]
    forced = cli(env, "capture", "install", "--capture", "logical", expect=ExitCode.USAGE)
    assert "wal_level is replica" in one_line(forced)
    assert databases.production.scalar("SELECT count(*) FROM pg_publication") == 0


def url_as(database: Database, role: str, password: str) -> str:
    parts = urlsplit(database.url)
    netloc = f"{quote(role)}:{quote(password)}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@pytest.fixture
def plain_role(logical_server: Server, logical_databases: DatabasePair) -> Iterator[str]:
    """A login role with nothing but SELECT on jobs; removed with all it owns afterwards."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    with logical_server.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    logical_databases.production.execute(
        sql.SQL("GRANT SELECT ON jobs TO {}").format(sql.Identifier(role)).as_string(None)
    )
    try:
        yield role
    finally:
        logical_server.drop_slots(logical_databases.production.name)
        with logical_databases.production.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with logical_server.admin() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_each_missing_grant_is_named_in_turn_until_install_succeeds(
    logical_databases: DatabasePair, plain_role: str, cli: Cli
) -> None:
    """REPLICATION, CREATE on the database, then the table's ownership: one line each, exit 2."""
    production, role = logical_databases.production, plain_role
    env = logical_env(logical_databases, PRODUCTION_DATABASE_URL=url_as(production, role, "pw"))
    steps = [
        (f"role {role} lacks the REPLICATION attribute", f"ALTER ROLE {role} REPLICATION"),
        (
            f"role {role} lacks CREATE on database {production.name}",
            f"GRANT CREATE ON DATABASE {production.name} TO {role}",
        ),
        (
            f"role {role} does not own production table public.jobs",
            f"ALTER TABLE jobs OWNER TO {role}",
        ),
    ]
    for refusal, grant in steps:
        line = one_line(cli(env, "capture", "install", expect=ExitCode.USAGE))
        assert refusal in line
        assert production.scalar("SELECT count(*) FROM pg_publication") == 0
        production.execute(grant)
    cli(env, "capture", "install")
    cli(env, "capture", "status", "--check")


def test_check_fails_on_a_role_without_replication(
    logical_databases: DatabasePair, plain_role: str, cli: Cli
) -> None:
    """check reads everything else as that role, then names the missing attribute in one line."""
    production = logical_databases.production
    env = logical_env(
        logical_databases, PRODUCTION_DATABASE_URL=url_as(production, plain_role, "pw")
    )
    result = cli(env, "check", expect=ExitCode.USAGE)
    assert "✓ production: public.jobs" in result.out
    line = one_line(result)
    assert line.startswith("propagator: error: logical capture is not ready: ")
    assert f"ALTER ROLE {plain_role} REPLICATION" in line


def test_check_reports_a_missing_publication_in_one_line_and_passes_after_install(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """check exits 2 until capture install ran, then lists the publication and the slot."""
    env, slot = logical_env(logical_databases), slot_of(logical_databases)
    line = one_line(cli(env, "check", expect=ExitCode.USAGE))
    assert line == (
        "propagator: error: logical capture is not ready: publication propagator does not "
        f"exist; replication slot {slot} does not exist; run `propagator capture install`"
    )
    cli(env, "capture", "install")
    checked = cli(env, "check").out
    assert "✓ publication propagator: public.jobs (job, release, fab_order, id)" in checked
    assert f"✓ replication slot {slot}: pgoutput, wal_status reserved" in checked


def test_printed_sql_lists_the_columns_and_applied_by_hand_installs_capture(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """sql changes nothing; its script, run as printed, leaves capture current."""
    env, slot, production = (
        logical_env(logical_databases),
        slot_of(logical_databases),
        logical_databases.production,
    )
    script = cli(env, "capture", "sql").out
    assert (
        "--   public.jobs: publishes job, release, fab_order, id (watched: job, release, "
        "fab_order; replica identity DEFAULT (primary key id))"
    ) in script
    columns = '("job", "release", "fab_order", "id")'
    assert f'CREATE PUBLICATION "propagator" FOR TABLE\n    "public"."jobs" {columns}\n' in script
    assert "WITH (publish = 'insert, update, delete', publish_via_partition_root = true);" in script
    assert f"pg_create_logical_replication_slot('{slot}', 'pgoutput');" in script
    assert production.scalar("SELECT count(*) FROM pg_publication") == 0
    assert slot_row(production, slot) is None
    with psycopg.connect(production.url, autocommit=True) as conn:
        conn.execute(script.encode())
    cli(env, "capture", "status", "--check")
    current = cli(env, "capture", "sql").out
    assert "-- publication propagator is current: nothing to run" in current
    assert (
        f"-- replication slot {slot} exists (pgoutput, wal_status reserved): nothing to run"
        in current
    )


@pytest.fixture(scope="module")
def unbounded_server() -> Iterator[Server]:
    """Slots may retain WAL without limit."""
    yield from dedicated_logical_server("test-unbounded", "-1")


@pytest.mark.parametrize("dedicated_pair", ["unbounded_server"], indirect=True)
def test_an_unbounded_slot_is_refused_unless_allowed(
    dedicated_pair: DatabasePair, cli: Cli
) -> None:
    """max_slot_wal_keep_size = -1: exit 2 saying why; --allow-unbounded-slot installs."""
    env, slot, production = (
        logical_env(dedicated_pair),
        slot_of(dedicated_pair),
        dedicated_pair.production,
    )
    line = one_line(cli(env, "capture", "install", expect=ExitCode.USAGE))
    assert "max_slot_wal_keep_size is -1 (unbounded)" in line
    assert "would retain WAL until the disk fills" in line
    assert line.endswith("or pass --allow-unbounded-slot")
    assert slot_row(production, slot) is None
    assert production.scalar("SELECT count(*) FROM pg_publication") == 0
    cli(env, "capture", "install", "--allow-unbounded-slot")
    assert slot_row(production, slot) is not None
    text = cli(env, "capture", "status", "--check").out
    assert "max_slot_wal_keep_size -1 (unbounded)" in text


@pytest.mark.slow
@pytest.mark.parametrize("dedicated_pair", ["small_wal_server"], indirect=True)
def test_a_slot_that_lost_its_wal_is_reported_and_install_recreates_it(
    dedicated_pair: DatabasePair, cli: Cli
) -> None:
    """wal_status lost: status --check exits 1 saying changes were missed; install recreates it."""
    env, slot, production = (
        logical_env(dedicated_pair),
        slot_of(dedicated_pair),
        dedicated_pair.production,
    )
    cli(env, "capture", "install")

    def lost() -> bool:
        production.execute(
            "INSERT INTO jobs (job, release) "
            "SELECT g, md5(random()::text) FROM generate_series(1, 20000) AS g"
        )
        production.execute("SELECT pg_switch_wal()")
        production.execute("CHECKPOINT")
        state = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s"
        return bool(production.scalar(state, (slot,)) == "lost")

    wait_until(lost, timeout=60, interval=0, what="the slot losing its WAL")
    stale = cli(env, "capture", "status", "--check", expect=ExitCode.DIFFERENCES_FOUND).out
    assert f"  ! replication slot {slot} lost WAL it needed (wal_status lost): changes" in stale
    installed = cli(env, "capture", "install").out.splitlines()
    assert installed[0].startswith("✓ publication propagator is current: ")
    assert installed[1].startswith(
        f"✓ replication slot {slot} had lost WAL it needed (wal_status lost): dropped and "
        "created again at "
    )
    assert "run `propagator reconcile --apply`" in installed[1]
    row = slot_row(production, slot)
    assert row is not None
    assert row[4] is not None  # a restart_lsn again: the new slot keeps WAL


def test_uninstall_refuses_a_slot_being_read_naming_its_reader(
    logical_databases: DatabasePair, cli: Cli
) -> None:
    """A session streaming the slot: exit 2 with its pid, nothing dropped; once it ends, removed."""
    env, slot, production = (
        logical_env(logical_databases),
        slot_of(logical_databases),
        logical_databases.production,
    )
    cli(env, "capture", "install")
    reader = subprocess.Popen(
        [
            str(binary_dir() / "pg_recvlogical"), "-d", production.url, "--slot", slot,
            "--start", "--no-loop", "-f", "-", "-o", "proto_version=1",
            "-o", "publication_names=propagator",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        row = wait_until(
            lambda: (r := slot_row(production, slot)) is not None and r[2] and r,
            what="the slot being read",
        )
        line = one_line(cli(env, "capture", "uninstall", expect=ExitCode.USAGE))
        assert line == (
            f"propagator: error: replication slot {slot} is active (pid {row[3]}): stop the "
            "daemon reading it, then uninstall again"
        )
        assert published(production) == {"jobs": ["id", "job", "release", "fab_order"]}
    finally:
        reader.terminate()
        reader.wait(timeout=30)
    wait_until(lambda: not slot_row(production, slot)[2], what="the slot released")  # type: ignore[index]
    cli(env, "capture", "uninstall")
    assert slot_row(production, slot) is None


def test_one_publication_covers_the_selected_tables_of_a_database(
    logical_databases: DatabasePair, cli: Cli, tmp_path: Path
) -> None:
    """Two mappings, two tables, one publication; a table no selected mapping reads is drift."""
    logical_databases.production.execute(ORDERS_DDL)
    config = tmp_path / "propagator.toml"
    config.write_text(mappings_toml([{"name": "jobs"}, ORDERS_MAPPING]))
    env, args = logical_env(logical_databases), ("--config", str(config))
    cli(env, "capture", "install", *args)
    assert published(logical_databases.production) == {
        "jobs": ["id", "job", "release", "fab_order"],
        "orders": ["id", "status"],
    }
    document = json.loads(cli(env, "capture", "status", "--json", *args).out)
    assert document["mappings"] == ["jobs", "orders"]
    assert document["current"] is True
    narrowed = cli(env, "capture", "status", "--check", "--mapping", "orders", *args, expect=1).out
    assert (
        "publication propagator also publishes public.jobs, which no selected mapping" in narrowed
    )


def test_a_second_database_on_the_server_cannot_share_the_slot_name(
    logical_databases: DatabasePair, logical_server: Server, cli: Cli, tmp_path: Path
) -> None:
    """Slot names are server-wide: the second database's install names logical_slot, exit 2."""
    other = logical_server.create_database(f"{logical_databases.production.name}_b", TEMPLATE)
    try:
        other.execute(ORDERS_DDL)
        config = tmp_path / "propagator.toml"
        orders = {**ORDERS_MAPPING, "production_database_url": other.url}
        config.write_text(mappings_toml([{"name": "jobs"}, orders]))
        env = logical_env(logical_databases)
        result = cli(env, "capture", "install", "--config", str(config), expect=ExitCode.USAGE)
        headings = [line for line in result.out.splitlines() if line.startswith("postgresql://")]
        assert headings == [
            f"{logical_databases.production.url} (mapping: jobs)",
            f"{other.url} (mapping: orders)",
        ]
        line = one_line(result)
        assert f"replication slot {slot_of(logical_databases)} belongs to database " in line
        assert "logical_slot (PROPAGATOR_LOGICAL_SLOT)" in line
        assert other.scalar("SELECT count(*) FROM pg_publication") == 0
    finally:
        logical_server.drop_database(other.name)


def test_with_notify_capture_the_command_manages_the_triggers(
    databases: DatabasePair, cli: Cli
) -> None:
    """capture install|status|sql|uninstall do what triggers does; no publication, no slot."""
    env = {
        "PRODUCTION_DATABASE_URL": databases.production.url,
        "SANDBOX_DATABASE_URL": databases.sandbox.url,
    }
    installed = cli(env, "capture", "install").out
    assert installed.startswith("✓ triggers installed on public.jobs (version ")
    assert installed.endswith("channel propagator_jobs, watching job, release, fab_order)\n")
    triggers = (
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
    )
    assert databases.production.scalar(triggers) == 5
    assert "✓ triggers on public.jobs: current" in cli(env, "capture", "status", "--check").out
    document = json.loads(cli(env, "capture", "status", "--json").out)
    assert document["current"] is True
    assert cli(env, "capture", "sql").out == cli(env, "triggers", "sql").out
    assert databases.production.scalar("SELECT count(*) FROM pg_publication") == 0
    assert databases.production.scalar("SELECT count(*) FROM pg_replication_slots") == 0
    assert cli(env, "capture", "uninstall").out == "✓ triggers removed from public.jobs\n"
    assert databases.production.scalar(triggers) == 0
