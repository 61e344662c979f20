"""The full reconcile (checksum or stream) sees every real difference, however the hash behaves."""

from __future__ import annotations

import json

import pytest

from tests.hardening.support import pair_env
from tests.helpers import DatabasePair, run_cli

TABLE = "CREATE TABLE signs (job int, release text, fab_order numeric, UNIQUE (job, release))"
# Pairs a hash could confuse: PostgreSQL's numeric hash ignores the sign, maps NaN and
# both infinities to its seed and zero to the seed minus one.
PAIRS = [
    ("7", "-7"),
    ("-0.5", "0.5"),
    ("NaN", "Infinity"),
    ("Infinity", "-Infinity"),
    ("NaN", "-Infinity"),
    ("0", "-Infinity"),
    ("0", "Infinity"),
    ("0", "NaN"),
]


@pytest.mark.parametrize("method", ["auto", "checksum", "stream"])
def test_sign_and_special_values_are_differences(databases: DatabasePair, method: str) -> None:
    """7 against -7, NaN against Infinity: each is found by --check and converged by --apply."""
    for database in (databases.production, databases.sandbox):
        database.execute(TABLE)
    for job, (production, sandbox) in enumerate(PAIRS, start=1):
        databases.production.execute(
            "INSERT INTO signs VALUES (%s, 'A', %s::numeric)", (job, production)
        )
        databases.sandbox.execute("INSERT INTO signs VALUES (%s, 'A', %s::numeric)", (job, sandbox))
    env = pair_env(databases, PROPAGATOR_PRODUCTION_TABLE="signs", PROPAGATOR_SANDBOX_TABLE="signs")

    checked = run_cli(["reconcile", "--check", "--method", method, "--format", "json"], env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert sorted(row["key"][0] for row in report["changes"]) == list(range(1, len(PAIRS) + 1))

    applied = run_cli(["reconcile", "--apply", "--method", method], env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rows = "SELECT job, fab_order::text FROM signs ORDER BY job"
    assert databases.sandbox.fetchall(rows) == databases.production.fetchall(rows)
    again = run_cli(["reconcile", "--check", "--method", method], env)
    assert again.returncode == 0, again.stdout + again.stderr
