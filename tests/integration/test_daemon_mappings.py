"""Three named mappings in one daemon, on real servers: each converges, and each fails alone.

``jobs`` mirrors public.jobs.fab_order into the sandbox, ``orders`` mirrors
public.orders.status into the same sandbox, and ``jobs_qa`` mirrors
public.jobs.fab_order into a second sandbox on a server of this module's own
(the shared session servers are never stopped). One daemon serves the three
from one TOML file: one LISTEN connection for the production database, one
trigger set per production table, and per mapping its own leader lock, writers
and retries, so a mapping whose sandbox is down or broken never holds back the
others.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from propagator.daemon import Daemon
from propagator.demo.embedded import EmbeddedPostgres
from propagator.errors import ConfigurationError, ExitCode
from propagator.services import triggers
from propagator.services.trigger_names import names_for
from propagator.settings import Configuration, load_configuration, watched_tables
from tests.conftest import Server
from tests.helpers import (
    JOBS_DDL,
    ORDERS_MAPPING,
    Database,
    DatabasePair,
    mappings_toml,
    run_cli,
    wait_until,
)
from tests.integration.support import FAST, ObservedDaemon

ROWS = 200
NAMES = ("jobs", "orders", "jobs_qa")
ORDERS_DDL = "CREATE TABLE public.orders (id integer PRIMARY KEY, status text)"
TRIGGERS_ON = """
SELECT tgname FROM pg_catalog.pg_trigger
WHERE tgrelid = %s::regclass AND NOT tgisinternal ORDER BY tgname
"""
PROPAGATOR_FUNCTIONS = "SELECT count(*) FROM pg_catalog.pg_proc WHERE proname LIKE 'propagator_%'"
LISTENERS = """
SELECT count(*) FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'propagator listener%'
"""


def config_text(qa_url: str) -> str:
    """The daemon's quick test tuning at the top level, then the three mappings."""
    return mappings_toml(
        [
            {"name": "jobs", "field_mappings": ["fab_order"]},
            ORDERS_MAPPING,
            {"name": "jobs_qa", "sandbox_database_url": qa_url, "field_mappings": ["fab_order"]},
        ],
        **FAST,
    )


# The second sandbox server.


def start_server(name: str) -> EmbeddedPostgres:
    try:
        return EmbeddedPostgres(name).start()
    except ConfigurationError as error:  # the wheel is missing: the servers came by URL
        pytest.skip(f"no embedded PostgreSQL for the second sandbox: {error}")


@pytest.fixture(scope="module")
def qa_server() -> Iterator[Server]:
    """A second sandbox server shared by this module's quick tests; never stopped by them."""
    embedded = start_server("test-qa")
    try:
        yield Server(embedded.url(), embedded)
    finally:
        embedded.cleanup()


@pytest.fixture
def stoppable_qa_server() -> Iterator[Server]:
    """A second sandbox server of the test's own, which it may stop and restart."""
    embedded = start_server("test-qa-outage")
    try:
        yield Server(embedded.url(), embedded)
    finally:
        embedded.cleanup()


# The databases of the three mappings, and the proofs of convergence.


@dataclass
class Estate:
    """Production, both sandboxes and the config file naming them."""

    databases: DatabasePair
    qa: Database
    config: Path

    @property
    def production(self) -> Database:
        return self.databases.production

    @property
    def sandbox(self) -> Database:
        return self.databases.sandbox

    def configuration(self) -> Configuration:
        """The file's mappings (those PROPAGATOR_MAPPINGS selects, when set)."""
        return load_configuration(
            self.config,
            production_database_url=self.production.url,
            sandbox_database_url=self.sandbox.url,
        )

    def install_triggers(self) -> None:
        """One trigger set per production table, through the library the CLI uses."""
        with psycopg.connect(self.production.url, autocommit=True) as conn:
            for table in watched_tables(self.configuration().mappings):
                triggers.install(conn, table)

    def jobs_behind(self) -> int:
        return _behind(self.production.fab_orders(), self.sandbox.fab_orders())

    def qa_behind(self) -> int:
        return _behind(self.production.fab_orders(), self.qa.fab_orders())

    def orders_behind(self) -> int:
        query = "SELECT id, status FROM orders"
        return _behind(dict(self.production.fetchall(query)), dict(self.sandbox.fetchall(query)))

    def lagging(self, names: tuple[str, ...]) -> dict[str, int]:
        """The named mappings whose sandbox differs from production, with how many keys."""
        behind = {"jobs": self.jobs_behind, "orders": self.orders_behind, "jobs_qa": self.qa_behind}
        counts = {name: behind[name]() for name in names}
        return {name: count for name, count in counts.items() if count}

    def wait_converged(self, *names: str, timeout: float = 20.0) -> None:
        """Each named mapping's sandbox equal to production, within ``timeout`` seconds."""
        try:
            wait_until(lambda: not self.lagging(names), timeout=timeout, what="convergence")
        except AssertionError:
            behind = self.lagging(names)
            raise AssertionError(f"not converged within {timeout}s: {behind}") from None


def _behind(production: dict[Any, Any], sandbox: dict[Any, Any]) -> int:
    """How many production keys the sandbox misses or holds another value for."""
    return sum(1 for key, value in production.items() if sandbox.get(key, object()) != value)


def prepare(databases: DatabasePair, server: Server, tmp_path: Path) -> Iterator[Estate]:
    """ROWS keys on every side, the sandboxes' values all different from production's."""
    for database in (databases.production, databases.sandbox):
        database.execute(ORDERS_DDL)
    name = f"qa_{uuid.uuid4().hex[:12]}"
    qa = server.create_database(name)
    try:
        qa.execute(JOBS_DDL)
        databases.production.insert_jobs((i, "A", i) for i in range(1, ROWS + 1))
        databases.sandbox.insert_jobs((i, "A", 0) for i in range(1, ROWS + 1))
        qa.insert_jobs((i, "A", None) for i in range(1, ROWS + 1))
        keys = [(i,) for i in range(1, ROWS + 1)]
        with databases.production.connect() as conn:
            conn.cursor().executemany("INSERT INTO orders VALUES (%s, 'new')", keys)
        with databases.sandbox.connect() as conn:
            conn.cursor().executemany("INSERT INTO orders (id) VALUES (%s)", keys)
        config = tmp_path / "propagator.toml"
        config.write_text(config_text(qa.url))
        yield Estate(databases, qa, config)
    finally:
        with contextlib.suppress(psycopg.OperationalError):  # a stopped server takes it along
            server.drop_database(name)


@pytest.fixture
def estate(databases: DatabasePair, qa_server: Server, tmp_path: Path) -> Iterator[Estate]:
    yield from prepare(databases, qa_server, tmp_path)


@pytest.fixture
def outage_estate(
    databases: DatabasePair, stoppable_qa_server: Server, tmp_path: Path
) -> Iterator[Estate]:
    """The estate with jobs_qa's sandbox on the server the test may stop."""
    yield from prepare(databases, stoppable_qa_server, tmp_path)


# Production load: several writers over both tables.


def update_concurrently(production: Database, seconds: float, writers: int = 4) -> int:
    """``writers`` threads updating jobs and orders (each its own share of the keys) for
    ``seconds``; the number of committed updates. A writer's failure fails the caller."""
    committed = [0] * writers
    failures: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def write(number: int) -> None:
        rng = random.Random(number)
        keys = [k for k in range(1, ROWS + 1) if k % writers == number]
        try:
            with production.connect() as conn:
                while time.monotonic() < deadline:
                    key = rng.choice(keys)
                    value = rng.randint(1, 1_000_000)
                    conn.execute("UPDATE jobs SET fab_order = %s WHERE job = %s", (value, key))
                    conn.execute("UPDATE orders SET status = %s WHERE id = %s", (f"s{value}", key))
                    committed[number] += 2
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=write, args=(n,), name=f"writer-{n}", daemon=True)
        for n in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    assert not failures, failures
    assert all(committed), committed
    return sum(committed)


# The daemon serving the mappings, seen through its HTTP endpoint.


class MappingsDaemon(ObservedDaemon):
    """``ObservedDaemon`` serving the configuration's selected mappings."""

    def __init__(self, configuration: Configuration) -> None:
        super().__init__(configuration.settings, thread_name="mappings-daemon")
        self.daemon = Daemon(
            configuration.settings, mappings=configuration.mappings, handle_signals=False
        )

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def mapping(self, name: str) -> dict[str, Any]:
        mappings: list[dict[str, Any]] = self.status()["mappings"]
        (found,) = [m for m in mappings if m["name"] == name]
        return found

    def readyz(self) -> tuple[int, list[str]]:
        code, body = self.get("/readyz")
        reasons: list[str] = json.loads(body)["reasons"]
        return code, reasons


@contextlib.contextmanager
def serving(configuration: Configuration) -> Iterator[MappingsDaemon]:
    """A daemon ready (every mapping caught up, HTTP bound); stopped gracefully afterwards."""
    with MappingsDaemon(configuration).start(ready=True, timeout=30) as running:
        yield running
    assert running.exit_code == ExitCode.OK


def trigger_sets(production: Database) -> dict[str, list[str]]:
    return {
        table: [name for (name,) in production.fetchall(TRIGGERS_ON, (table,))]
        for table in ("public.jobs", "public.orders")
    }


# The tests.


@pytest.mark.slow
def test_three_mappings_converge_under_concurrent_updates(estate: Estate) -> None:
    """Two tables into one sandbox and one table into a second: all converge, one trigger
    set per production table, and /status lists the three mappings."""
    configuration = estate.configuration()
    assert configuration.names == NAMES
    installed = run_cli(
        ["triggers", "install", "--config", str(estate.config)], estate.databases.env()
    )
    assert installed.returncode == ExitCode.OK, installed.stdout + installed.stderr
    expected = {
        str(table.table): sorted(names_for(table.table).triggers)
        for table in watched_tables(configuration.mappings)
    }
    assert trigger_sets(estate.production) == expected
    assert len(expected) == 2
    assert estate.production.scalar(PROPAGATOR_FUNCTIONS) == 4

    with serving(configuration) as running:
        estate.wait_converged(*NAMES)  # the catch-up reconciles
        assert update_concurrently(estate.production, seconds=3) > 100
        estate.wait_converged(*NAMES)
        status = running.status()
        assert [m["name"] for m in status["mappings"]] == list(NAMES)
        for mapping in status["mappings"]:
            assert (mapping["role"], mapping["catchup_done"]) == ("leader", True), mapping
            assert mapping["last_error"] is None, mapping
            assert mapping["last_batch"] is not None, mapping
        assert {m["channel"] for m in status["mappings"]} == {
            "propagator_jobs",
            "propagator_orders",
        }
        assert running.readyz() == (200, [])
        assert estate.production.scalar(LISTENERS) == 1  # one LISTEN for both tables
        # A manual reconcile of one mapping (POST /reconcile?mapping=orders), and of a
        # name the daemon does not serve.
        summary = running.run_coroutine(lambda: running.daemon.reconcile_now(mapping="orders"))
        assert (summary["source"], summary["differences"]) == ("manual", 0)
        with pytest.raises(ConfigurationError, match="no mapping 'nope' here"):
            running.run_coroutine(lambda: running.daemon.reconcile_now(mapping="nope"))
    assert trigger_sets(estate.production) == expected  # the daemon installs nothing more


@pytest.mark.slow
def test_a_stopped_sandbox_stops_only_its_mapping(
    outage_estate: Estate, stoppable_qa_server: Server
) -> None:
    """jobs_qa's server down for 30 s under load: jobs and orders keep converging, jobs_qa is
    reported in /status and /readyz, and catches up after the restart, same daemon."""
    server = stoppable_qa_server.embedded
    assert server is not None
    estate = outage_estate
    estate.install_triggers()
    with serving(estate.configuration()) as running:
        instance = running.status()["instance_id"]
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged(*NAMES)

        server.stop()
        down_since = time.monotonic()
        bursts = 0
        while time.monotonic() - down_since < 30:
            update_concurrently(estate.production, seconds=4)
            estate.wait_converged("jobs", "orders")
            bursts += 1
            if bursts == 1:
                assert_reported_down(running)
        assert_reported_down(running)
        for name in ("jobs", "orders"):
            healthy = running.mapping(name)
            assert (healthy["role"], healthy["catchup_done"]) == ("leader", True), healthy
            assert healthy["last_error"] is None, healthy

        server.restart()
        estate.wait_converged(*NAMES, timeout=60)
        wait_until(lambda: running.readyz() == (200, []), timeout=30, what="ready again")
        update_concurrently(estate.production, seconds=2)
        estate.wait_converged(*NAMES)
        assert running.alive
        assert running.status()["instance_id"] == instance
        qa = running.mapping("jobs_qa")
        assert (qa["role"], qa["catchup_done"]) == ("leader", True), qa
        assert running.metric("propagator_retries_total", mapping="jobs_qa") >= 1
        catchups = running.metric(
            "propagator_reconcile_runs_total", mapping="jobs_qa", source="catchup"
        )
        assert catchups >= 2, catchups
        for name in ("jobs", "orders"):
            assert running.metric("propagator_retries_total", mapping=name) == 0


def assert_reported_down(running: MappingsDaemon) -> None:
    """jobs_qa carries an error in /status and names itself in /readyz's reasons."""
    wait_until(
        lambda: running.mapping("jobs_qa")["last_error"],
        timeout=10,
        what="jobs_qa's last_error",
    )
    wait_until(lambda: running.readyz()[0] == 503, timeout=10, what="/readyz answering 503")
    code, reasons = running.readyz()
    assert code == 503
    assert reasons, reasons
    assert all(reason.startswith("mapping jobs_qa: ") for reason in reasons), reasons


@pytest.mark.slow
def test_a_dropped_sandbox_column_breaks_only_its_mapping(estate: Estate) -> None:
    """orders' sandbox column dropped: reported and retried while jobs converges; once the
    column is back, orders converges again without a restart."""
    estate.install_triggers()
    with serving(estate.configuration()) as running:
        estate.sandbox.execute("ALTER TABLE orders DROP COLUMN status")
        update_concurrently(estate.production, seconds=1)
        wait_until(
            lambda: "status" in (running.mapping("orders")["last_error"] or ""),
            what="orders' last_error naming the dropped column",
        )
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged("jobs", "jobs_qa")
        # The refused batch, then the full reconcile it asked for, failing again and again.
        wait_until(
            lambda: (
                running.metric("propagator_retries_total", mapping="orders", cause="permanent") >= 3
            ),
            what="orders retried",
        )
        assert "status" in running.mapping("orders")["last_error"]
        for name in ("jobs", "jobs_qa"):
            assert running.mapping(name)["last_error"] is None
        assert running.alive

        estate.sandbox.execute("ALTER TABLE orders ADD COLUMN status text")
        estate.wait_converged("orders")
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged(*NAMES)
        for name in ("jobs", "jobs_qa"):
            assert running.metric("propagator_retries_total", mapping=name) == 0


def test_the_selected_mapping_alone_is_served(
    estate: Estate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROPAGATOR_MAPPINGS=orders: the daemon serves orders only; jobs' sandboxes stay as
    they were. An unknown ``--mapping`` is refused with exit 2 and one line naming it."""
    estate.install_triggers()
    monkeypatch.setenv("PROPAGATOR_MAPPINGS", "orders")
    configuration = estate.configuration()
    assert (configuration.names, configuration.defined) == (("orders",), NAMES)
    with serving(configuration) as running:
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged("orders")
        status = running.status()
        assert [m["name"] for m in status["mappings"]] == ["orders"]
        assert status["channel"] == "propagator_orders"
    assert set(estate.sandbox.fab_orders().values()) == {0}
    assert set(estate.qa.fab_orders().values()) == {None}

    refused = run_cli(
        ["run", "--config", str(estate.config), "--mapping", "nope"], estate.databases.env()
    )
    assert refused.returncode == ExitCode.USAGE, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "'nope'" in line, line
    assert refused.stdout == ""


@pytest.mark.slow
def test_two_replicas_are_active_and_standby_per_mapping(estate: Estate) -> None:
    """Two daemons serving the same mappings: each mapping has exactly one leader, and a
    replica told to serve one half leads that half while the other leads the rest."""
    estate.install_triggers()
    configuration = estate.configuration()
    with serving(configuration) as first:
        second = MappingsDaemon(configuration)
        with second.start(timeout=30):
            second.wait_for(lambda d: d.http is not None, timeout=10, what="the HTTP endpoint")
            wait_until(
                lambda: all(m["role"] == "standby" for m in second.status()["mappings"]),
                what="the second replica standing by for every mapping",
            )
            leaders = {m["name"]: m["role"] for m in first.status()["mappings"]}
            assert leaders == dict.fromkeys(NAMES, "leader")
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged(*NAMES)
    halves = [
        load_configuration(
            estate.config,
            selection=[name],
            production_database_url=estate.production.url,
            sandbox_database_url=estate.sandbox.url,
        )
        for name in ("jobs", "orders")
    ]
    with serving(halves[0]) as jobs_half, serving(halves[1]) as orders_half:
        for running, name in ((jobs_half, "jobs"), (orders_half, "orders")):
            (mapping,) = running.status()["mappings"]
            assert (mapping["name"], mapping["role"]) == (name, "leader")
        update_concurrently(estate.production, seconds=1)
        estate.wait_converged("jobs", "orders")
