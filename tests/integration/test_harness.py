"""The harness itself: two separate servers, isolated databases."""

from tests.helpers import DatabasePair


def test_production_and_sandbox_are_separate_servers(databases: DatabasePair) -> None:
    """Production and sandbox live on different PostgreSQL servers, as in life."""
    production = databases.production.scalar("SELECT inet_server_port()")
    sandbox = databases.sandbox.scalar("SELECT inet_server_port()")
    system_id = "SELECT system_identifier FROM pg_control_system()"
    assert (production, databases.production.scalar(system_id)) != (
        sandbox,
        databases.sandbox.scalar(system_id),
    )


def test_each_test_starts_with_an_empty_jobs_table(databases: DatabasePair) -> None:
    """Every test gets fresh databases holding an empty seed-shaped jobs table."""
    databases.production.insert_jobs([(1, "A", 5)])
    assert databases.production.scalar("SELECT count(*) FROM jobs") == 1
    assert databases.sandbox.scalar("SELECT count(*) FROM jobs") == 0
