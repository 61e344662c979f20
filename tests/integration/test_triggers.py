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

CHANNEL = "propagator_jobs"
SENTINEL = "end-of-test-statements"


def settings_for(databases: DatabasePair, **overrides: Any) -> Settings:
    return load_settings(
        None,
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        **overrides,
    )


class Listener:
    """A plain autocommit connection LISTENing on the channel, as the daemon's would."""

    def __init__(self, database: Database, channel: str = CHANNEL) -> None:
        self.database = database
        self.channel = channel
        self.conn = database.connect()
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def payloads(self) -> list[str]:
        """Everything notified so far: a sentinel sent last marks the end, so no sleeps."""
        with self.database.connect() as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, SENTINEL))
        received: list[str] = []
        for notify in self.conn.notifies(timeout=30):
            if notify.payload == SENTINEL:
                return received
            received.append(notify.payload)
        raise AssertionError(f"the sentinel never arrived; got {received!r}")

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads()]

    def keys(self) -> list[list[Any]]:
        return [key for document in self.documents() for key in document.get("k", [])]


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
    """A 9,000-row statement sends every key in a few chunks, each under 8000 bytes."""
    rows = [(n, f"release-{n:06d}", n) for n in range(9000)]
    databases.production.insert_jobs(rows)
    payloads = installed.payloads()
    keys = [key for p in payloads for key in json.loads(p)["k"]]
    assert sorted(keys) == sorted([job, release] for job, release, _ in rows)
    assert all(len(p.encode()) < 8000 for p in payloads)
    key_bytes = sum(len(json.dumps(k).encode()) + 1 for k in keys)
    assert len(payloads) <= math.ceil(key_bytes / 7500) + 1
