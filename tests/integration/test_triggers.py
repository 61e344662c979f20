"""The production triggers, observed as a DBA would: LISTEN on the channel, run statements."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from propagator.errors import SchemaError
from propagator.services import triggers
from propagator.settings import Settings, load_settings
from tests.helpers import Database, DatabasePair
from tests.integration.trigger_support import CHANNEL, Listener


def settings_for(databases: DatabasePair, **overrides: Any) -> Settings:
    return load_settings(
        None,
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        **overrides,
    )


@pytest.fixture
def settings(databases: DatabasePair) -> Settings:
    return settings_for(databases)


@pytest.fixture
def installed(databases: DatabasePair, settings: Settings) -> Iterator[Listener]:
    """Triggers installed on the seed-shaped jobs table, and a listener."""
    with psycopg.connect(databases.production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(databases.production)
    try:
        yield listener
    finally:
        listener.conn.close()


def test_update_of_a_mapped_column_notifies_its_key(
    databases: DatabasePair, installed: Listener
) -> None:
    """Changing fab_order sends payload v1 with that row's key and the change time."""
    databases.production.insert_jobs([(10001, "A", 5), (10002, "B", 6)])
    installed.payloads()
    databases.production.execute("UPDATE jobs SET fab_order = 7 WHERE job = 10001")
    (document,) = installed.documents()
    assert document["v"] == 1
    assert document["k"] == [[10001, "A"]]
    now = databases.production.scalar("SELECT extract(epoch FROM clock_timestamp())")
    assert 0 <= float(now) - document["t"] < 60


def test_update_of_an_unmapped_column_sends_nothing(
    databases: DatabasePair, installed: Listener
) -> None:
    """Changing only paint_color or stage wakes nobody."""
    databases.production.insert_jobs([(1, "A", 5, "red", "cut")])
    installed.payloads()
    databases.production.execute("UPDATE jobs SET paint_color = 'blue', stage = 'weld'")
    assert installed.payloads() == []


def test_update_to_the_same_value_sends_nothing(
    databases: DatabasePair, installed: Listener
) -> None:
    """Setting a mapped column to its current value (or NULL to NULL) is not a change."""
    databases.production.insert_jobs([(1, "A", 5), (2, "B", None)])
    installed.payloads()
    databases.production.execute("UPDATE jobs SET fab_order = fab_order, job = job")
    databases.production.execute("UPDATE jobs SET fab_order = 5.000 WHERE job = 1")
    assert installed.payloads() == []


def test_insert_delete_and_key_change_send_the_right_keys(
    databases: DatabasePair, installed: Listener
) -> None:
    """INSERT sends the new key, DELETE the old key, a key change both old and new."""
    databases.production.execute(
        "INSERT INTO jobs (job, release, fab_order) VALUES (1, 'A', 5), (2, 'B', 6)"
    )
    assert sorted(installed.keys()) == [[1, "A"], [2, "B"]]
    databases.production.execute("UPDATE jobs SET release = 'C' WHERE job = 2")
    assert sorted(installed.keys()) == [[2, "B"], [2, "C"]]
    databases.production.execute("DELETE FROM jobs WHERE job = 1")
    assert installed.keys() == [[1, "A"]]


def test_a_rolled_back_transaction_sends_nothing(
    databases: DatabasePair, installed: Listener
) -> None:
    """Notifications are transactional: a rolled-back change announces nothing."""
    databases.production.insert_jobs([(1, "A", 5)])
    installed.payloads()
    with databases.production.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE jobs SET fab_order = 9")
        conn.execute("INSERT INTO jobs (job, release) VALUES (2, 'B')")
        conn.execute("ROLLBACK")
    assert installed.payloads() == []


def test_install_on_a_missing_table_is_a_schema_error(databases: DatabasePair) -> None:
    """Installing on a table that does not exist names the table and changes nothing."""
    settings = settings_for(databases, production_table="public.nope")
    with (
        psycopg.connect(databases.production.url) as conn,
        pytest.raises(SchemaError, match="nope"),
    ):
        triggers.install(conn, settings)


def test_payloads_stay_small_for_many_keys(databases: DatabasePair, installed: Listener) -> None:
    """A 6,000-row statement sends every key in a few chunks, each under 8000 bytes."""
    rows = [(n, f"release-{n:06d}", n) for n in range(6000)]
    databases.production.insert_jobs(rows)
    payloads = installed.payloads()
    keys = [key for p in payloads for key in json.loads(p)["k"]]
    assert sorted(keys) == sorted([job, release] for job, release, _ in rows)
    assert all(len(p.encode()) < 8000 for p in payloads)
    key_bytes = sum(len(json.dumps(k).encode()) + 1 for k in keys)
    assert len(payloads) <= math.ceil(key_bytes / 7500) + 1


def key_bytes(keys: list[list[Any]]) -> int:
    """Room the keys take in payloads, as the trigger counts it (JSON text and a comma)."""
    return sum(len(json.dumps(k).encode()) + 1 for k in keys)


@pytest.mark.slow
def test_a_hundred_thousand_row_update_sends_one_resync_and_a_fitting_one_its_keys(
    databases: DatabasePair, installed: Listener
) -> None:
    """100,000 keys overflow the payload budget: one resync; 80 % of the budget: every key."""
    rows = [(n, f"r{n}", n) for n in range(100_000)]
    databases.production.insert_jobs(rows)
    installed.payloads()
    budget = triggers.RESYNC_PAYLOADS * triggers.KEY_BYTES_PER_PAYLOAD
    everything = [[job, release] for job, release, _ in rows]
    assert key_bytes(everything) > 2 * budget  # no way to list them: a resync is the answer
    databases.production.execute("UPDATE jobs SET fab_order = fab_order + 1")
    (resync,) = installed.documents()
    assert resync.get("resync") is True
    assert not resync.get("k")

    # The largest statement that clearly fits is listed key by key, in full payloads.
    fitting, used = 0, 0
    while used + key_bytes(everything[fitting : fitting + 1]) < 0.8 * budget:
        used += key_bytes(everything[fitting : fitting + 1])
        fitting += 1
    databases.production.execute(
        "UPDATE jobs SET fab_order = fab_order + 1 WHERE job < %s", [fitting]
    )
    payloads = installed.payloads()
    documents = [json.loads(p) for p in payloads]
    assert not any(d.get("resync") for d in documents), "a statement that fits was not listed"
    keys = [key for d in documents for key in d["k"]]
    assert sorted(keys) == sorted(everything[:fitting])
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert len(payloads) <= math.ceil(key_bytes(keys) / 7500) + 1


def test_payloads_parse_as_v1_for_the_daemon(databases: DatabasePair, installed: Listener) -> None:
    """What the trigger sends is exactly what the daemon's payload v1 parser accepts."""
    from propagator.core.payload import Change, Resync, parse_notification

    databases.production.insert_jobs([(7, "A", 1)])
    databases.production.execute("UPDATE jobs SET fab_order = 2")
    databases.production.insert_jobs([(8, "y" * 3000, 8)])
    databases.production.insert_jobs([(n, "x" * 8000, n) for n in range(9, 11)])
    parsed = [parse_notification(p, key_width=2) for p in installed.payloads()]
    assert isinstance(parsed[0], Change)
    assert parsed[0].keys == ((7, "A"),)
    assert isinstance(parsed[1], Change)
    assert parsed[1].keys == ((7, "A"),)
    assert isinstance(parsed[2], Change)
    assert parsed[2].keys == ((8, "y" * 3000),)
    assert isinstance(parsed[3], Resync)  # a key too long for any payload is not listed


ODD_TABLE = """
CREATE TABLE public.odd (
    code text,
    at timestamptz,
    doc json,
    spot point,
    ratio double precision,
    tags text[],
    note text
)
"""


def test_odd_keys_and_types_never_fail_the_production_statement(
    databases: DatabasePair,
) -> None:
    """NULL keys, a 10,000-character key, json/point/NaN values: statements succeed, notify."""
    databases.production.execute(ODD_TABLE)
    settings = settings_for(
        databases,
        production_table="public.odd",
        key_columns="code,at",
        field_mappings='["doc", "spot", "ratio", "tags"]',
    )
    with psycopg.connect(databases.production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(databases.production)
    production = databases.production
    production.execute(
        "INSERT INTO odd VALUES (NULL, NULL, '{\"a\": 1}', '(1,2)', 'NaN', '{x}', 'n')"
    )
    production.execute("INSERT INTO odd VALUES (repeat('k', 10000), now(), '[]', NULL, 1, NULL)")
    production.execute("INSERT INTO odd VALUES ('é\"''\\', '2024-01-01', 'null', NULL, 2, '{}')")
    production.execute("UPDATE odd SET doc = '{\"a\": 2}', spot = '(3,4)', ratio = 'Infinity'")
    production.execute("UPDATE odd SET note = 'only an unwatched column'")
    production.execute("UPDATE odd SET doc = doc::jsonb::json, ratio = ratio")
    production.execute("DELETE FROM odd")
    documents = [json.loads(p) for p in listener.payloads()]
    assert production.scalar("SELECT count(*) FROM odd") == 0
    resyncs = [d for d in documents if d.get("resync")]
    changes = [d["k"] for d in documents if "k" in d]
    # NULL keys are never sent; the 10,000-character key turns its statements into resyncs.
    assert len(resyncs) == 3  # insert of the long key, the update, the delete
    assert changes == [[["é\"'\\", "2024-01-01T00:00:00+00:00"]]]
    listener.conn.close()


def test_an_error_in_the_trigger_becomes_a_warning_and_a_resync(
    databases: DatabasePair, settings: Settings, installed: Listener
) -> None:
    """Even a trigger broken by a dropped key column lets the user's statement commit."""
    production = databases.production
    production.insert_jobs([(1, "A", 5)])
    installed.payloads()
    # The WHEN clause depends on watched columns, so only CASCADE can drop one.
    production.execute("ALTER TABLE jobs DROP COLUMN release CASCADE")
    warnings: list[str] = []
    with production.connect() as conn:
        conn.add_notice_handler(lambda notice: warnings.append(str(notice.message_primary)))
        conn.execute("INSERT INTO jobs (job, fab_order) VALUES (2, 6)")
    assert production.scalar("SELECT count(*) FROM jobs") == 2
    assert [json.loads(p).get("resync") for p in installed.payloads()] == [True]
    assert any("requesting a resync" in w for w in warnings)
    with psycopg.connect(production.url) as conn:
        state = triggers.status(conn, settings)
    assert not state.current
    assert any("propagator_jobs_update" in p for p in state.problems)


def _catalog(database: Database, table: str = "public.jobs") -> tuple[list[str], list[str]]:
    trigger_rows = database.fetchall(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal"
        " ORDER BY 1",
        (table,),
    )
    function_rows = database.fetchall(
        "SELECT proname FROM pg_proc WHERE proname LIKE 'propagator%' ORDER BY 1"
    )
    return [r[0] for r in trigger_rows], [r[0] for r in function_rows]


def test_install_twice_is_idempotent(
    databases: DatabasePair, settings: Settings, installed: Listener
) -> None:
    """A second install leaves the same five triggers and two functions; one change, one notice."""
    before = _catalog(databases.production)
    with psycopg.connect(databases.production.url) as conn:
        triggers.install(conn, settings)
        state = triggers.status(conn, settings)
    assert _catalog(databases.production) == before
    assert before == (
        [
            "propagator_jobs_delete",
            "propagator_jobs_insert",
            "propagator_jobs_send",
            "propagator_jobs_send_update",
            "propagator_jobs_update",
        ],
        ["propagator_collect_jobs", "propagator_send_jobs"],
    )
    assert state.current
    databases.production.insert_jobs([(1, "A", 5)])
    assert installed.keys() == [[1, "A"]]


OLDER_VERSION = """
CREATE FUNCTION public.propagator_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', '{"v":1,"t":0,"resync":true}'); RETURN NULL; END $$;
COMMENT ON FUNCTION public.propagator_notify_jobs() IS
    '{"managed_by": "propagator", "version": 0, "channel": "propagator_jobs"}';
CREATE FUNCTION public.propagator_jobs_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'row'); RETURN NULL; END $$;
COMMENT ON FUNCTION public.propagator_jobs_row_notify() IS
    '{"managed_by": "propagator", "version": 0}';
CREATE TRIGGER propagator_jobs_update AFTER UPDATE ON public.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.propagator_notify_jobs();
CREATE TRIGGER propagator_jobs_row AFTER INSERT OR UPDATE ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.propagator_jobs_row_notify();
CREATE FUNCTION public.audit_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
CREATE TRIGGER audit_jobs AFTER UPDATE ON public.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.audit_jobs();
"""


def test_upgrade_from_an_older_version_replaces_it_in_place(
    databases: DatabasePair, settings: Settings
) -> None:
    """An older install (other triggers, old function) is upgraded; others' triggers survive."""
    databases.production.execute(OLDER_VERSION)
    with psycopg.connect(databases.production.url) as conn:
        old = triggers.status(conn, settings)
        triggers.install(conn, settings)
        new = triggers.status(conn, settings)
    assert old.installed
    assert not old.current
    assert old.version == 0
    assert any("obsolete triggers: propagator_jobs_row" in p for p in old.problems)
    assert new.current
    assert new.version == triggers.TRIGGER_VERSION
    assert _catalog(databases.production) == (
        [
            "audit_jobs",
            "propagator_jobs_delete",
            "propagator_jobs_insert",
            "propagator_jobs_send",
            "propagator_jobs_send_update",
            "propagator_jobs_update",
        ],
        ["propagator_collect_jobs", "propagator_send_jobs"],
    )


LEGACY_ROW_TRIGGER = """
CREATE FUNCTION public.propagator_jobs_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'row'); RETURN NULL; END $$;
COMMENT ON FUNCTION public.propagator_jobs_row_notify() IS
    '{"managed_by": "propagator", "version": 0}';
CREATE TRIGGER propagator_jobs_row AFTER INSERT OR UPDATE ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.propagator_jobs_row_notify();
"""


def test_uninstall_leaves_nothing_behind(
    databases: DatabasePair, settings: Settings, installed: Listener
) -> None:
    """After uninstall no propagator trigger or function remains, and nothing is notified."""
    databases.production.execute(LEGACY_ROW_TRIGGER)
    with psycopg.connect(databases.production.url) as conn:
        triggers.uninstall(conn, settings)
        triggers.uninstall(conn, settings)
        state = triggers.status(conn, settings)
    assert _catalog(databases.production) == ([], [])
    assert not state.installed
    assert state.problems == ("not installed",)
    databases.production.insert_jobs([(1, "A", 5)])
    assert installed.payloads() == []


def test_status_reports_version_columns_and_drift(
    databases: DatabasePair, settings: Settings, installed: Listener
) -> None:
    """Status shows version, channel and columns, and says when the configuration moved on."""
    wider = settings_for(databases, field_mappings="fab_order,paint_color")
    with psycopg.connect(databases.production.url) as conn:
        state = triggers.status(conn, settings)
        drifted = triggers.status(conn, wider)
        triggers.install(conn, wider)
        upgraded = triggers.status(conn, wider)
    assert (state.installed, state.current) == (True, True)
    assert state.version == triggers.TRIGGER_VERSION
    assert state.channel == CHANNEL
    assert state.watched_columns == ("job", "release", "fab_order")
    assert not drifted.current
    assert any("paint_color" in p for p in drifted.problems)
    assert upgraded.current
    databases.production.insert_jobs([(1, "A", 5, "red")])
    installed.payloads()
    databases.production.execute("UPDATE jobs SET paint_color = 'blue'")
    assert installed.keys() == [[1, "A"]]


HOSTILE_COLUMN = 'fab order"; drop table jobs; --'
DOLLAR_COLUMN = "x$propagator_notify$y"


def test_hostile_names_work_end_to_end(databases: DatabasePair) -> None:
    """Quoted schema, table and column names with spaces, quotes, unicode and SQL work."""
    production = databases.production
    production.execute(
        sql.SQL(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.{table} "
            "({key} int, release text, {hostile} numeric, {dollar} text, other text)"
        )
        .format(
            schema=sql.Identifier("my schema"),
            table=sql.Identifier("Odd Jobs"),
            key=sql.Identifier("Jöb Nr"),
            hostile=sql.Identifier(HOSTILE_COLUMN),
            dollar=sql.Identifier(DOLLAR_COLUMN),
        )
        .as_string(None)
    )
    settings = settings_for(
        databases,
        production_table='"my schema"."Odd Jobs"',
        key_columns=["Jöb Nr", "release"],
        field_mappings=json.dumps([HOSTILE_COLUMN, DOLLAR_COLUMN]),
        channel="Odd Channel",
    )
    assert '"fab order""; drop table jobs; --"' in triggers.render_install_sql(settings)
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
        assert triggers.status(conn, settings).current
    listener = Listener(production, channel="Odd Channel")
    table = '"my schema"."Odd Jobs"'
    production.execute(f"INSERT INTO {table} VALUES (1, 'A', 5, 'd', 'o')")
    production.execute(f'UPDATE {table} SET "fab order""; drop table jobs; --" = 6')
    production.execute(f"UPDATE {table} SET \"x$propagator_notify$y\" = 'e'")
    production.execute(f"UPDATE {table} SET other = 'p'")
    assert listener.keys() == [[1, "A"], [1, "A"], [1, "A"]]
    assert production.scalar("SELECT to_regclass('public.jobs') IS NOT NULL")
    with psycopg.connect(production.url) as conn:
        triggers.uninstall(conn, settings)
    assert _catalog(production, table) == ([], [])
    listener.conn.close()


def test_long_table_names_give_distinct_names_within_63_bytes(databases: DatabasePair) -> None:
    """Names derived from a 63-byte table name are cut safely, hashed, and still unique."""
    long_a, long_b = "é" * 30 + "abc", "é" * 30 + "abd"
    names = [
        triggers.trigger_names(settings_for(databases, production_table=f'"{name}"'))
        for name in (long_a, long_b)
    ]
    every = [n for t in names for n in (*(f.name for f in t.functions), *t.triggers)]
    assert all(len(n.encode()) <= 63 for n in every)
    assert len(set(every)) == len(every)
    databases.production.execute(f'CREATE TABLE "{long_a}" (LIKE public.jobs)')
    settings = settings_for(databases, production_table=f'"{long_a}"')
    with psycopg.connect(databases.production.url) as conn:
        triggers.install(conn, settings)
        assert triggers.status(conn, settings).current


def test_keys_of_a_rolled_back_savepoint_are_not_sent(
    databases: DatabasePair, installed: Listener
) -> None:
    """A statement undone by ROLLBACK TO SAVEPOINT announces nothing; the rest still does."""
    databases.production.insert_jobs([(1, "A", 5), (2, "B", 6)])
    installed.payloads()
    with databases.production.connect() as conn, conn.transaction():
        conn.execute("SAVEPOINT before_update")
        conn.execute("UPDATE jobs SET fab_order = 9 WHERE job = 1")
        conn.execute("ROLLBACK TO SAVEPOINT before_update")
        conn.execute("UPDATE jobs SET fab_order = 9 WHERE job = 2")
    assert installed.keys() == [[2, "B"]]


def test_a_partitioned_table_announces_changes_in_every_partition(
    databases: DatabasePair,
) -> None:
    """Row triggers reach every partition; one statement on the parent sends one payload."""
    production = databases.production
    production.execute(
        "CREATE TABLE parts (job int, release text, fab_order numeric) PARTITION BY RANGE (job);"
        "CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);"
        "CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (200)"
    )
    settings = settings_for(databases, production_table="public.parts")
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(production)
    production.execute("INSERT INTO parts VALUES (1, 'A', 1), (150, 'B', 2)")
    production.execute("UPDATE parts SET fab_order = fab_order + 1")
    documents = listener.documents()
    assert [sorted(d["k"]) for d in documents] == [[[1, "A"], [150, "B"]]] * 2
    listener.conn.close()


PREVIOUS_VERSION = """
CREATE FUNCTION public.propagator_collect_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'version 2 collect'); RETURN NULL; END $$;
CREATE FUNCTION public.propagator_send_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'version 2 send'); RETURN NULL; END $$;
CREATE TRIGGER propagator_jobs_insert AFTER INSERT ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.propagator_collect_jobs();
CREATE TRIGGER propagator_jobs_update AFTER UPDATE ON public.jobs
    FOR EACH ROW
    WHEN (OLD.job IS DISTINCT FROM NEW.job OR OLD.release IS DISTINCT FROM NEW.release
          OR OLD.fab_order IS DISTINCT FROM NEW.fab_order)
    EXECUTE FUNCTION public.propagator_collect_jobs();
CREATE TRIGGER propagator_jobs_delete AFTER DELETE ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION public.propagator_collect_jobs();
CREATE TRIGGER propagator_jobs_send AFTER INSERT OR UPDATE OR DELETE ON public.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION public.propagator_send_jobs();
COMMENT ON FUNCTION public.propagator_collect_jobs() IS '{"managed_by": "propagator", "version": 2,
    "channel": "propagator_jobs", "key_columns": ["job", "release"],
    "watched_columns": ["job", "release", "fab_order"]}';
COMMENT ON FUNCTION public.propagator_send_jobs() IS '{"managed_by": "propagator", "version": 2,
    "channel": "propagator_jobs", "key_columns": ["job", "release"],
    "watched_columns": ["job", "release", "fab_order"]}';
"""


def test_upgrade_from_the_previous_version_keeps_the_functions_and_adds_column_lists(
    databases: DatabasePair, settings: Settings
) -> None:
    """Version 2's layout (same functions, WHEN-gated triggers) is upgraded in place."""
    production = databases.production
    production.execute(PREVIOUS_VERSION)
    with psycopg.connect(production.url) as conn:
        old = triggers.status(conn, settings)
        triggers.install(conn, settings)
        new = triggers.status(conn, settings)
    assert (old.version, old.current) == (2, False)
    assert any("missing triggers: propagator_jobs_send_update" in p for p in old.problems)
    assert (new.version, new.current) == (triggers.TRIGGER_VERSION, True)
    assert production.fetchall(
        "SELECT tgname, cardinality(tgattr::int2[]), tgqual IS NOT NULL FROM pg_trigger"
        " WHERE tgrelid = 'public.jobs'::regclass ORDER BY tgname"
    ) == [
        ("propagator_jobs_delete", 0, False),
        ("propagator_jobs_insert", 0, False),
        ("propagator_jobs_send", 0, False),
        ("propagator_jobs_send_update", 3, False),
        ("propagator_jobs_update", 3, False),
    ]
    listener = Listener(production)
    production.insert_jobs([(1, "A", 5)])
    production.execute("UPDATE jobs SET fab_order = 6")
    assert listener.keys() == [[1, "A"], [1, "A"]]
    listener.conn.close()


FUNCTION_CALLS = """
SELECT coalesce(pg_stat_get_xact_function_calls('public.propagator_collect_jobs'::regproc), 0),
       coalesce(pg_stat_get_xact_function_calls('public.propagator_send_jobs'::regproc), 0)
"""


def test_only_statements_naming_a_watched_column_call_the_trigger_functions(
    databases: DatabasePair, installed: Listener
) -> None:
    """Unmapped UPDATEs call nothing; a mapped one calls the collector per row, the sender once."""
    databases.production.insert_jobs([(1, "A", 5), (2, "B", 6), (3, "C", 7)])
    installed.payloads()
    calls: list[tuple[int, int]] = []
    with databases.production.connect() as conn:
        conn.execute("SET track_functions = 'pl'")
        with conn.transaction():
            for statement in (
                "UPDATE jobs SET paint_color = 'blue', stage = 'weld'",
                "UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 1",
                "UPDATE jobs SET fab_order = fab_order, stage = 'paint'",
                "UPDATE jobs SET fab_order = fab_order + 1",
            ):
                conn.execute(statement)
                row = conn.execute(FUNCTION_CALLS).fetchone()
                assert row is not None
                calls.append((int(row[0]), int(row[1])))
    # Cumulative (collector, sender) calls after each statement.
    assert calls == [(0, 0), (1, 1), (4, 2), (7, 3)]
    documents = installed.documents()
    assert [sorted(d["k"]) for d in documents] == [[[1, "A"]], [[1, "A"], [2, "B"], [3, "C"]]]


DERIVED_FAB_ORDER = """
CREATE FUNCTION derive_fab_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.fab_order := length(NEW.stage); RETURN NEW; END $$;
CREATE TRIGGER derive_fab_order BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION derive_fab_order();
"""


def test_a_before_update_trigger_that_changes_a_watched_column_is_not_missed(
    databases: DatabasePair, settings: Settings, installed: Listener
) -> None:
    """Another BEFORE UPDATE trigger makes status complain; installed again, every UPDATE counts."""
    production = databases.production
    production.insert_jobs([(1, "A", 5, "red", "cut")])
    installed.payloads()
    production.execute(DERIVED_FAB_ORDER)
    with psycopg.connect(production.url) as conn:
        stale = triggers.status(conn, settings)
        triggers.install(conn, settings)
        fresh = triggers.status(conn, settings)
    assert not stale.current
    assert any("BEFORE UPDATE trigger derive_fab_order" in p for p in stale.problems)
    assert fresh.current
    production.execute("UPDATE jobs SET stage = 'welding'")  # fab_order becomes 7
    production.execute("UPDATE jobs SET paint_color = 'blue'")  # fab_order stays 7
    production.execute("UPDATE jobs SET stage = 'welding'")
    assert installed.keys() == [[1, "A"]]
    assert production.scalar("SELECT fab_order FROM jobs") == 7


def test_too_many_keys_for_the_payloads_send_one_resync_and_reset(
    databases: DatabasePair, installed: Listener
) -> None:
    """Past 25 payloads' worth of keys one resync is sent; the next statement lists keys again."""
    production = databases.production
    rows = [(n, f"{n:04d}" + "r" * 1000, n) for n in range(250)]  # ~36 payloads of keys
    with production.connect() as conn, conn.transaction():
        conn.execute(
            "INSERT INTO jobs (job, release, fab_order)"
            " SELECT * FROM unnest(%s::int[], %s::text[], %s::numeric[])",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )
        conn.execute("UPDATE jobs SET fab_order = 0 WHERE job = 1")
    documents = installed.documents()
    assert [d.get("resync") for d in documents] == [True, None]
    assert documents[1]["k"] == [[1, rows[1][1]]]


def test_keys_changing_to_or_from_a_null_part_send_only_complete_keys(
    databases: DatabasePair,
) -> None:
    """A key changing to, from or between keys with a NULL part lists only complete keys."""
    production = databases.production
    production.execute("CREATE TABLE public.nk (a int, b text, v int)")
    settings = settings_for(
        databases, production_table="public.nk", key_columns="a,b", field_mappings='["v"]'
    )
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(production)
    production.execute("INSERT INTO nk VALUES (2, 'B', 2), (3, 'C', 3), (1, NULL, 1)")
    production.execute("UPDATE nk SET a = a + 10, v = v + 1")  # (1, NULL) -> (11, NULL) last
    production.execute("UPDATE nk SET b = CASE a WHEN 12 THEN NULL ELSE 'D' END")
    keys = [sorted(d["k"]) for d in listener.documents()]
    assert keys == [
        [[2, "B"], [3, "C"]],
        [[2, "B"], [3, "C"], [12, "B"], [13, "C"]],
        [[11, "D"], [12, "B"], [13, "C"], [13, "D"]],
    ]
    listener.conn.close()


def test_json_keys_with_newlines_still_split_into_valid_payloads(databases: DatabasePair) -> None:
    """A json key keeps its raw newlines in to_json; such keys go through jsonb instead."""
    production = databases.production
    production.execute("CREATE TABLE public.jk (k json, v int)")
    settings = settings_for(
        databases, production_table="public.jk", key_columns="k", field_mappings='["v"]'
    )
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(production)
    production.execute(
        'INSERT INTO jk SELECT format(E\'{\\n"n": %s,\\n"pad": "%s"}\', g, repeat(\'p\', 90))'
        "::json, g FROM generate_series(1, 200) AS g"
    )
    documents = listener.documents()
    assert len(documents) >= 2
    assert sorted(key[0]["n"] for d in documents for key in d["k"]) == list(range(1, 201))
    listener.conn.close()
