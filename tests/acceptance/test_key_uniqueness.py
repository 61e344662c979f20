"""Keys that are not unique, and a filter the server refuses, stop every command unwritten."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import DatabasePair, run_cli
from tests.integration.uniqueness_support import (
    duplicate_in_production,
    duplicate_in_sandbox,
    refusal,
    snapshot,
)

RECONCILES = [
    [*method, *apply]
    for method in (["--method", "auto"], ["--method", "checksum"], ["--method", "stream"])
    for apply in ([], ["--apply"])
]


def refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2 and exactly one line on stderr: the refusal, never a traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"propagator: error: {line}"]


def test_check_says_how_the_keys_are_proved_unique_on_each_side(databases: DatabasePair) -> None:
    """check names the unique constraint on each side, or the query that found no duplicate."""
    databases.production.insert_jobs([(1, "A", 1), (2, "A", 2)])
    databases.sandbox.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_job_release_key")
    result = run_cli(["check"], databases.env())
    assert result.returncode == 0, result.stderr
    assert (
        "✓ key columns: job, release (production: unique constraint jobs_job_release_key; "
        "sandbox: no unique index, no duplicate key found)"
    ) in result.stdout.splitlines()


def test_check_says_a_nullable_key_column_never_collides(databases: DatabasePair) -> None:
    """A unique index on a nullable key column proves the key; check says NULLs never collide."""
    for db in (databases.production, databases.sandbox):
        db.execute("CREATE UNIQUE INDEX jobs_stage_idx ON jobs (stage)")
    result = run_cli(["check"], databases.env(PROPAGATOR_KEY_COLUMNS="stage,release"))
    assert result.returncode == 0, result.stderr
    assert "production: unique index jobs_stage_idx, stage nullable: NULLs never collide" in (
        result.stdout
    )


@pytest.mark.parametrize("command", [["check"], *(["reconcile", *r] for r in RECONCILES)])
def test_a_duplicate_production_key_is_refused(databases: DatabasePair, command: list[str]) -> None:
    """check and every reconcile (each method, dry run and --apply) refuse job alone as the key."""
    duplicate_in_production(databases)
    before = snapshot(databases.sandbox)
    result = run_cli(command, databases.env(PROPAGATOR_KEY_COLUMNS="job"))
    refused(result, refusal("production", "job", "1"))
    assert snapshot(databases.sandbox) == before


@pytest.mark.parametrize(
    "command", [["check"], ["reconcile", "--method", "stream", "--apply"], ["reconcile"]]
)
def test_a_duplicate_sandbox_key_is_refused(databases: DatabasePair, command: list[str]) -> None:
    """A key unique in production but not in the sandbox is refused, naming the sandbox table."""
    duplicate_in_sandbox(databases)
    databases.sandbox.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_job_release_key")
    before = snapshot(databases.sandbox)
    result = run_cli(command, databases.env(PROPAGATOR_KEY_COLUMNS="job"))
    refused(result, refusal("sandbox", "job", "1"))
    assert snapshot(databases.sandbox) == before


def test_two_columns_that_are_not_a_key_are_refused(databases: DatabasePair) -> None:
    """stage, release holds one duplicate (cut-A): --apply refuses it and writes nothing."""
    duplicate_in_production(databases)
    before = snapshot(databases.sandbox)
    env = databases.env(PROPAGATOR_KEY_COLUMNS="stage,release")
    result = run_cli(["reconcile", "--apply"], env)
    refused(result, refusal("production", "stage, release", "cut-A"))
    assert snapshot(databases.sandbox) == before


def test_the_filter_decides_which_production_rows_must_be_unique(databases: DatabasePair) -> None:
    """A duplicate the production filter leaves out is no duplicate: the reconcile runs."""
    duplicate_in_production(databases)
    databases.sandbox.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_job_release_key")
    databases.sandbox.execute("DELETE FROM jobs WHERE release = 'B'")
    env = databases.env(PROPAGATOR_KEY_COLUMNS="job", PROPAGATOR_PRODUCTION_FILTER="release = 'A'")
    result = run_cli(["reconcile", "--apply"], env)
    assert result.returncode == 0, result.stderr
    assert databases.sandbox.fetchall("SELECT job, fab_order FROM jobs ORDER BY job") == [
        (1, 1),
        (2, 3),
    ]


@pytest.mark.parametrize(
    ("where", "cause"),
    [
        ("nosuch = 1", 'column "nosuch" does not exist'),
        ("job = 'abc'", 'invalid input syntax for type integer: "abc"'),
        ("stage + 1 = 2", "operator does not exist: text + integer"),
    ],
)
def test_a_filter_the_server_refuses_is_a_settings_error(
    databases: DatabasePair, where: str, cause: str
) -> None:
    """A filter with a missing column or a type error names PROPAGATOR_PRODUCTION_FILTER."""
    databases.production.insert_jobs([(1, "A", 1)])
    databases.sandbox.insert_jobs([(1, "A", 0)])
    before = snapshot(databases.sandbox)
    env = databases.env(PROPAGATOR_PRODUCTION_FILTER=where)
    for command in (["check"], ["reconcile", "--apply"]):
        result = run_cli(command, env)
        refused(result, f"invalid setting PROPAGATOR_PRODUCTION_FILTER: {cause}")
    assert snapshot(databases.sandbox) == before


def test_run_refuses_non_unique_keys_at_start(databases: DatabasePair) -> None:
    """propagator run exits 2 with the refusal when both databases answer and the keys repeat."""
    duplicate_in_production(databases)
    before = snapshot(databases.sandbox)
    result = run_cli(["run"], databases.env(PROPAGATOR_KEY_COLUMNS="job"), timeout=60)
    refused(result, refusal("production", "job", "1"))
    assert snapshot(databases.sandbox) == before
