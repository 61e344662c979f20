"""Non-unique keys in the seed's API and the running daemon: refused, reported, nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy.engine import Engine

from propagator import DatabaseMappingService, map_production_fab_order_to_sandbox
from propagator.adapters.tables import describe_table
from propagator.core.identifiers import parse_qualified_name
from propagator.core.plan import FieldChange, JobMappingResult, MatchStatus
from propagator.errors import (
    ConfigurationError,
    ExitCode,
    NonUniqueKeyError,
    SettingsMismatchError,
)
from propagator.services.database_mapping import create_engine
from propagator.services.preflight import prove_unique
from propagator.services.reconcile import run_reconcile
from propagator.services.sync import SyncSession
from propagator.settings import load_settings
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.support import daemon_settings, install_triggers
from tests.integration.uniqueness_support import (
    duplicate_in_production,
    duplicate_in_sandbox,
    refusal,
    snapshot,
)


@pytest.fixture
def engines(databases: DatabasePair) -> Iterator[tuple[Engine, Engine]]:
    production, sandbox = (
        create_engine(databases.production.url),
        create_engine(databases.sandbox.url),
    )
    try:
        yield production, sandbox
    finally:
        production.dispose()
        sandbox.dispose()


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_one_call_api_refuses_non_unique_keys(
    databases: DatabasePair, engines: tuple[Engine, Engine], dry_run: bool
) -> None:
    """map_production_fab_order_to_sandbox raises the refusal (exit 2), logs and writes nothing."""
    duplicate_in_production(databases)
    before = snapshot(databases.sandbox)
    lines: list[str] = []
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        key_columns="job",
    )
    with pytest.raises(NonUniqueKeyError) as caught:
        map_production_fab_order_to_sandbox(
            *engines, dry_run=dry_run, log_callback=lines.append, settings=settings
        )
    assert str(caught.value) == refusal("production", "job", "1")
    assert isinstance(caught.value, ConfigurationError)
    assert caught.value.exit_code == ExitCode.USAGE
    assert lines == []
    assert snapshot(databases.sandbox) == before


def test_map_jobs_by_key_refuses_duplicate_rows_on_either_side() -> None:
    """Rows given to map_jobs_by_key with one key twice raise the refusal naming the side."""
    one = {"job": 1, "release": "A", "fab_order": 1}
    other = {"job": 1, "release": "B", "fab_order": 2}
    with pytest.raises(NonUniqueKeyError) as caught:
        DatabaseMappingService.map_jobs_by_key([one, other], [one], key_columns=("job",))
    assert str(caught.value).startswith("key columns (job) are not unique in the production rows")
    with pytest.raises(NonUniqueKeyError, match=r"in the sandbox rows: duplicate key 1;"):
        DatabaseMappingService.map_jobs_by_key([one], [one, other], key_columns=("job",))


def test_apply_field_updates_refuses_a_non_unique_sandbox_key(
    databases: DatabasePair, engines: tuple[Engine, Engine]
) -> None:
    """apply_field_updates would update two rows for one key: it refuses and writes nothing."""
    duplicate_in_sandbox(databases)
    databases.sandbox.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_job_release_key")
    before = snapshot(databases.sandbox)
    change = FieldChange("fab_order", Decimal(0), Decimal(9))
    result = JobMappingResult((1,), MatchStatus.MATCHED, (change,))
    with pytest.raises(NonUniqueKeyError) as caught:
        DatabaseMappingService.apply_field_updates(
            engines[1], [result], dry_run=False, key_columns=("job",)
        )
    assert str(caught.value) == refusal("sandbox", "job", "1", table="jobs")
    assert snapshot(databases.sandbox) == before


def test_a_key_that_stops_being_unique_while_running_is_refused(databases: DatabasePair) -> None:
    """The batch holding the now-duplicate key is not applied; the daemon reports it and runs on."""
    settings = daemon_settings(databases, key_columns="job")
    install_triggers(databases, settings)
    databases.production.insert_jobs((job, "A", job) for job in range(1, 21))
    databases.sandbox.insert_jobs((job, "A", job) for job in range(1, 21))
    line = refusal("production", "job", "5")
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        databases.production.insert_jobs([(5, "B", 500)])
        databases.production.execute("UPDATE jobs SET fab_order = 555 WHERE job = 5")
        wait_until(
            lambda: running.metric("propagator_retries_total", cause="permanent") >= 2,
            what="the refused batch and the refused reconcile it asked for",
        )
        assert running.daemon.last_error == line
        assert running.alive
        assert databases.sandbox.fetchall(
            "SELECT job, release, fab_order FROM jobs WHERE job = 5"
        ) == [(5, "A", 5)]


def test_a_duplicate_search_that_outlasts_the_statement_timeout_asks_for_an_index(
    databases: DatabasePair,
) -> None:
    """Without an index, a search cut by the statement timeout says to add a unique index."""
    with (
        databases.production.connect() as holder,
        psycopg.connect(databases.production.url, options="-c statement_timeout=300") as conn,
    ):
        table = describe_table(conn, parse_qualified_name("public.jobs"), "production")
        with holder.transaction():
            holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(SettingsMismatchError) as caught:
                prove_unique(conn, table, ("job",))
    assert str(caught.value) == (
        "no unique index covers the key columns (job) of the production table public.jobs and "
        "looking for a duplicate key took longer than PROPAGATOR_STATEMENT_TIMEOUT: "
        "add a unique index on (job)"
    )


@pytest.mark.parametrize("method", ["auto", "stream"])
def test_a_duplicate_that_appears_after_preparing_is_refused_by_the_reconcile(
    databases: DatabasePair, method: str
) -> None:
    """A key duplicated between preparing and comparing ends the reconcile with the refusal."""
    databases.production.insert_jobs([(1, "A", 1), (2, "A", 2), (3, "A", 3)])
    databases.sandbox.insert_jobs([(1, "A", 0), (2, "A", 0), (3, "A", 0)])
    settings = daemon_settings(databases, key_columns="job")
    before = snapshot(databases.sandbox)
    with SyncSession(settings) as session:
        context = session.prepare()
        databases.production.insert_jobs([(2, "B", 9)])
        with pytest.raises(NonUniqueKeyError) as caught:
            run_reconcile(settings, apply=True, source="reconcile", context=context, method=method)
    assert str(caught.value) == refusal("production", "job", "2")
    assert snapshot(databases.sandbox) == before
