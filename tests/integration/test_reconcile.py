"""The reconcile's handled errors and edge cases, through the CLI a user runs."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from propagator.demo.embedded import free_port
from tests.conftest import Server
from tests.helpers import Database, DatabasePair, run_cli

PRODUCTION = [(1, "A", 510), (2, "B", 800), (3, "C", 100), (4, "D", 42)]
SANDBOX = [(1, "A", 500), (2, "B", 750), (3, "C", Decimal("100.0")), (9, "Z", 1)]


def reconcile(databases: DatabasePair, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``propagator reconcile`` against the pair, asserting it never shows a traceback."""
    result = run_cli(["reconcile", *args], databases.env(**env))
    assert "Traceback" not in result.stderr + result.stdout
    return result


def report(databases: DatabasePair, *args: str, **env: str) -> dict[str, Any]:
    result = reconcile(databases, "--format", "json", *args, **env)
    assert result.returncode in (0, 1, 4), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def checksum(database: Database, table: str = "jobs") -> str:
    """A fingerprint of every row and column, to prove nothing was written."""
    return str(
        database.scalar(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        )
    )


@pytest.fixture
def seeded(databases: DatabasePair) -> DatabasePair:
    databases.production.insert_jobs(PRODUCTION)
    databases.sandbox.insert_jobs(SANDBOX)
    return databases


@pytest.mark.parametrize("side", ["production", "sandbox"])
def test_unreachable_database_is_named_with_password_masked(
    seeded: DatabasePair, side: str
) -> None:
    """An unreachable database gives one line naming it (password masked) and exit 3."""
    url = f"postgresql://app:Sup3rSecretPw@127.0.0.1:{free_port()}/jobs"
    result = reconcile(seeded, **{f"{side.upper()}_DATABASE_URL": url})
    assert result.returncode == 3
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith(f"propagator: error: cannot connect to the {side} database at ")
    assert "postgresql://app:***@127.0.0.1:" in errors[0]
    assert "Sup3rSecretPw" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("side", "role", "column"),
    [
        ("production", "mapped", "fab_order"),
        ("sandbox", "mapped", "fab_order"),
        ("production", "key", "release"),
        ("sandbox", "key", "release"),
    ],
)
def test_missing_column_stops_before_anything_is_written(
    seeded: DatabasePair, side: str, role: str, column: str
) -> None:
    """A missing key or mapped column on either side exits 2 naming table and column."""
    database = seeded.production if side == "production" else seeded.sandbox
    database.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    before = checksum(seeded.sandbox)
    result = reconcile(seeded, "--apply")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"propagator: error: {role} column '{column}' does not exist in the {side} table "
        "public.jobs"
    )
    assert checksum(seeded.sandbox) == before


def test_nulls_in_both_directions(databases: DatabasePair) -> None:
    """NULL -> value and value -> NULL are changes; NULL against NULL is not."""
    databases.production.insert_jobs([(1, "A", None), (2, "B", 5), (3, "C", None)])
    databases.sandbox.insert_jobs([(1, "A", 7), (2, "B", None), (3, "C", None)])
    document = report(databases)
    changes = {c["label"]: c["changes"] for c in document["changes"]}
    assert changes == {
        "1-A": [{"field": "fab_order", "old": 7.0, "new": None}],
        "2-B": [{"field": "fab_order", "old": None, "new": 5.0}],
    }
    assert reconcile(databases, "--apply").returncode == 0
    assert databases.sandbox.fab_orders() == {
        (1, "A"): None,
        (2, "B"): Decimal("5.00"),
        (3, "C"): None,
    }
    assert report(databases)["statistics"]["rows_with_differences"] == 0


def test_text_production_column_into_numeric_sandbox_with_a_transform(
    databases: DatabasePair,
) -> None:
    """A text production column maps onto a numeric sandbox column through ``:decimal``."""
    databases.production.execute(
        "CREATE TABLE jobs_text (job int, release text, fab_order text, UNIQUE (job, release))"
    )
    databases.production.execute(
        "INSERT INTO jobs_text VALUES (1, 'A', '510.00'), (2, 'B', '500'), (3, 'C', NULL), "
        "(4, 'D', ' 7.5 ')"
    )
    databases.sandbox.insert_jobs([(1, "A", 500), (2, "B", 500), (3, "C", 3), (4, "D", 1)])
    env = {
        "PROPAGATOR_PRODUCTION_TABLE": "jobs_text",
        "PROPAGATOR_FIELD_MAPPINGS": "fab_order->fab_order:decimal",
    }
    document = report(databases, **env)
    assert document["statistics"]["differences"] == {"fab_order": 3}
    assert sorted(c["label"] for c in document["changes"]) == ["1-A", "3-C", "4-D"]
    assert reconcile(databases, "--apply", **env).returncode == 0
    assert databases.sandbox.fab_orders() == {
        (1, "A"): Decimal("510.00"),
        (2, "B"): Decimal("500.00"),
        (3, "C"): None,
        (4, "D"): Decimal("7.50"),
    }
    assert report(databases, **env)["statistics"]["rows_with_differences"] == 0


def test_a_value_the_transform_cannot_convert_is_reported_and_the_rest_applied(
    databases: DatabasePair,
) -> None:
    """Text the decimal transform can't read fails that row only: reported, exit 4, rest applied."""
    databases.production.execute(
        "CREATE TABLE jobs_text (job int, release text, fab_order text, UNIQUE (job, release))"
    )
    databases.production.execute("INSERT INTO jobs_text VALUES (1, 'A', 'abc'), (2, 'B', '9')")
    databases.sandbox.insert_jobs([(1, "A", 1), (2, "B", 1)])
    env = {
        "PROPAGATOR_PRODUCTION_TABLE": "jobs_text",
        "PROPAGATOR_FIELD_MAPPINGS": "fab_order->fab_order:decimal",
    }
    result = reconcile(databases, "--apply", **env)
    assert result.returncode == 4, result.stderr
    assert (
        "✗ Job 1-A not applied: transform decimal cannot convert fab_order 'abc'" in result.stdout
    )
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal("1.00"), (2, "B"): Decimal("9.00")}


def test_rows_missing_in_the_sandbox_are_counted_and_listed(seeded: DatabasePair) -> None:
    """Keys production has and the sandbox lacks are counted, listed, and not fatal."""
    result = reconcile(seeded, "--apply")
    assert result.returncode == 0, result.stderr
    assert "  Not Found in Sandbox: 1" in result.stdout
    assert "Not Found in Sandbox (1):\n  - 4-D" in result.stdout
    assert "  Not Found in Production: 1" in result.stdout
    assert (4, "D") not in seeded.sandbox.fab_orders()


def test_rows_the_sandbox_rejects_are_isolated(databases: DatabasePair) -> None:
    """A CHECK violation and a numeric(5,2) overflow (never sent) are reported by key; the rest
    applies."""
    databases.production.insert_jobs([(n, "A", 10) for n in range(1, 21)])
    databases.production.execute("UPDATE jobs SET fab_order = 13 WHERE job = 5")
    databases.production.execute("UPDATE jobs SET fab_order = 123456 WHERE job = 15")
    databases.sandbox.insert_jobs([(n, "A", 0) for n in range(1, 21)])
    databases.sandbox.execute("ALTER TABLE jobs ALTER COLUMN fab_order TYPE numeric(5, 2)")
    databases.sandbox.execute("ALTER TABLE jobs ADD CONSTRAINT unlucky CHECK (fab_order <> 13)")

    result = reconcile(databases, "--apply")
    assert result.returncode == 4, result.stderr
    assert "✗ Job 5-A rejected by the sandbox:" in result.stdout
    assert "unlucky" in result.stdout
    assert "✗ Job 15-A not applied: fab_order 123456.00 does not fit numeric(5,2)" in result.stdout
    assert "✗ Applied 18 updates; 2 rows could not be applied" in result.stdout
    values = databases.sandbox.fab_orders()
    assert {key for key, value in values.items() if value == 0} == {(5, "A"), (15, "A")}
    assert sum(1 for value in values.values() if value == 10) == 18

    document = report(databases, "--apply")
    assert document["statistics"]["failed"] == 2
    assert sorted(f["label"] for f in document["failures"]) == ["15-A", "5-A"]


def test_over_long_text_is_rejected_not_truncated(databases: DatabasePair) -> None:
    """A value too long for a varchar(n) or char(n) sandbox column is refused, never cut short."""
    databases.production.insert_jobs(
        [(1, "A", 1, "red", "cut"), (2, "B", 1, "ultramarine", "cut"), (3, "C", 1, "tan", "paint")]
    )
    databases.sandbox.insert_jobs(
        [(1, "A", 1, "grey", "cut"), (2, "B", 1, "grey", "cut"), (3, "C", 1, "grey", "cut")]
    )
    databases.sandbox.execute("ALTER TABLE jobs ALTER paint_color TYPE varchar(5)")
    databases.sandbox.execute("ALTER TABLE jobs ALTER stage TYPE char(3)")
    env = {"PROPAGATOR_FIELD_MAPPINGS": "paint_color,stage"}
    document = report(databases, "--apply", **env)
    assert document["statistics"]["updated"] == 1
    assert [f["label"] for f in document["failures"]] == ["2-B", "3-C"]
    assert (
        document["failures"][0]["error"]
        == "paint_color ultramarine does not fit character varying(5)"
    )
    assert [f["kind"] for f in document["failures"]] == ["unfit", "unfit"]  # never sent
    assert databases.sandbox.fetchall("SELECT job, paint_color, stage FROM jobs ORDER BY job") == [
        (1, "red", "cut"),
        (2, "grey", "cut"),
        (3, "grey", "cut"),
    ]


def test_dry_run_writes_nothing(seeded: DatabasePair) -> None:
    """The default dry run leaves the sandbox byte-for-byte unchanged."""
    before = checksum(seeded.sandbox)
    result = reconcile(seeded)
    assert result.returncode == 0, result.stderr
    assert "⚠ DRY RUN MODE - No changes will be made" in result.stdout
    assert "[DRY RUN] Job 1-A: fab_order 500.00 → 510" in result.stdout
    assert "✓ Dry run completed successfully" in result.stdout
    assert checksum(seeded.sandbox) == before


def test_apply_then_dry_run_reports_no_differences(seeded: DatabasePair) -> None:
    """After ``--apply`` a second dry run finds nothing to do."""
    applied = reconcile(seeded, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "✓ Applied 2 updates" in applied.stdout
    again = reconcile(seeded)
    assert "  fab_order Differences: 0" in again.stdout
    assert "Total updates to apply: 0" in again.stdout


def test_check_exit_code(seeded: DatabasePair) -> None:
    """``--check`` exits 1 while differences exist and 0 once there are none."""
    assert reconcile(seeded, "--check").returncode == 1
    assert reconcile(seeded, "--apply").returncode == 0
    assert reconcile(seeded, "--check").returncode == 0


def test_json_report_is_one_document_with_exact_figures(seeded: DatabasePair) -> None:
    """``--format json`` prints one JSON document whose figures are exact."""
    result = reconcile(seeded, "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    statistics = document["statistics"]
    del statistics["duration_seconds"]
    assert statistics == {
        "production_rows": 4,
        "sandbox_rows": 4,
        "matched": 3,
        "not_found_in_sandbox": 1,
        "not_found_in_production": 1,
        "rows_with_differences": 2,
        "differences": {"fab_order": 2},
        "updated": 0,
        "failed": 0,
        "unfit": 0,
        "busy": 0,
    }
    assert document["dry_run"] is True
    assert document["changes"] == [
        {
            "key": [1, "A"],
            "label": "1-A",
            "changes": [{"field": "fab_order", "old": 500.0, "new": 510.0}],
        },
        {
            "key": [2, "B"],
            "label": "2-B",
            "changes": [{"field": "fab_order", "old": 750.0, "new": 800.0}],
        },
    ]
    assert document["not_found_in_sandbox"] == [[4, "D"]]


def test_single_column_bigint_key(databases: DatabasePair) -> None:
    """A one-column bigint key matches and converges."""
    ddl = "CREATE TABLE items (sku bigint PRIMARY KEY, qty numeric)"
    databases.production.execute(ddl)
    databases.sandbox.execute(ddl)
    big = 9_000_000_000_000_000_000
    databases.production.execute(
        "INSERT INTO items VALUES (%s, 1), (%s, 2), (-5, 3.5)", (big, big + 1)
    )
    databases.sandbox.execute("INSERT INTO items VALUES (%s, 1), (%s, 0), (-5, 0)", (big, big + 1))
    env = {
        "PROPAGATOR_PRODUCTION_TABLE": "items",
        "PROPAGATOR_SANDBOX_TABLE": "items",
        "PROPAGATOR_KEY_COLUMNS": "sku",
        "PROPAGATOR_FIELD_MAPPINGS": "qty",
    }
    document = report(databases, **env)
    assert sorted(c["label"] for c in document["changes"]) == ["-5", str(big + 1)]
    assert reconcile(databases, "--apply", **env).returncode == 0
    assert databases.sandbox.fetchall("SELECT sku, qty FROM items ORDER BY sku") == [
        (-5, Decimal("3.5")),
        (big, 1),
        (big + 1, 2),
    ]


def test_three_column_key_of_bigint_unicode_text_and_date(databases: DatabasePair) -> None:
    """A key of bigint, unicode text and date matches and converges."""
    ddl = (
        "CREATE TABLE parts (plant bigint, code text, made date, note text, "
        "PRIMARY KEY (plant, code, made))"
    )
    databases.production.execute(ddl)
    databases.sandbox.execute(ddl)
    rows = [
        (1, "Zürich ✓", date(2024, 2, 29), "new"),
        (1, "東京", date(1999, 12, 31), "same"),
        (2, "😀 emoji", date(2024, 1, 1), None),
        (2, "a", date(2024, 1, 1), "only in production"),
    ]
    for plant, code, made, note in rows:
        databases.production.execute(
            "INSERT INTO parts VALUES (%s, %s, %s, %s)", (plant, code, made, note)
        )
    for plant, code, made, note in [
        (1, "Zürich ✓", date(2024, 2, 29), "old"),
        (1, "東京", date(1999, 12, 31), "same"),
        (2, "😀 emoji", date(2024, 1, 1), "was set"),
    ]:
        databases.sandbox.execute(
            "INSERT INTO parts VALUES (%s, %s, %s, %s)", (plant, code, made, note)
        )
    env = {
        "PROPAGATOR_PRODUCTION_TABLE": "parts",
        "PROPAGATOR_SANDBOX_TABLE": "parts",
        "PROPAGATOR_KEY_COLUMNS": "plant,code,made",
        "PROPAGATOR_FIELD_MAPPINGS": "note",
    }
    document = report(databases, **env)
    assert sorted(c["label"] for c in document["changes"]) == [
        "1-Zürich ✓-2024-02-29",
        "2-😀 emoji-2024-01-01",
    ]
    assert document["statistics"]["not_found_in_sandbox"] == 1
    assert reconcile(databases, "--apply", **env).returncode == 0
    assert databases.sandbox.fetchall(
        "SELECT plant, code, made, note FROM parts ORDER BY 1, 2"
    ) == [
        (1, "Zürich ✓", date(2024, 2, 29), "new"),
        (1, "東京", date(1999, 12, 31), "same"),
        (2, "😀 emoji", date(2024, 1, 1), None),
    ]


COLLATION_KEYS = ["a", "B", "é", "Z", "ä", "b", "Ö", "o"]


def _database_with_other_collation(sandbox_server: Server) -> Iterator[Database]:
    """A database whose text sorts unlike C: libc en_US, else ICU, on any reachable server."""
    name = f"t_collation_{uuid.uuid4().hex[:8]}"
    icu = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    candidates = [
        (sandbox_server.admin_url, "LOCALE 'en_US.UTF-8'"),
        (sandbox_server.admin_url, icu),
        # PostgreSQL 15 is present on development and CI machines, built with ICU.
        ("postgresql://postgres@127.0.0.1:5432/postgres", icu),
    ]
    reasons = []
    for admin_url, locale in candidates:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' " + locale)
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
                conn.execute(statement.format(sql.Identifier(name)))
        except psycopg.Error as error:
            reasons.append(f"{locale}: {str(error).strip().splitlines()[0]}")
            continue
        server = Server(admin_url)
        try:
            yield Database(server.url_for(name), name)
        finally:
            server.drop_database(name)
        return
    pytest.skip(
        "no server can create a database with a non-C collation (no en_US.UTF-8 libc locale, "
        "no ICU build): " + "; ".join(reasons)
    )


@pytest.fixture
def collated_sandbox(sandbox_server: Server) -> Iterator[Database]:
    yield from _database_with_other_collation(sandbox_server)


def test_text_keys_match_across_servers_with_different_collations(
    databases: DatabasePair, collated_sandbox: Database
) -> None:
    """Text keys sorting differently under each server's collation still match one to one."""
    order = collated_sandbox.fetchall(
        "SELECT k FROM unnest(%s::text[]) AS k ORDER BY k", (COLLATION_KEYS,)
    )
    c_order = sorted(COLLATION_KEYS)
    assert [row[0] for row in order] != c_order, "the sandbox collation must differ from C"
    collated_sandbox.execute(
        "CREATE TABLE jobs (job int, release text, fab_order numeric(12, 2), UNIQUE (job, release))"
    )
    databases.production.insert_jobs([(1, key, index) for index, key in enumerate(COLLATION_KEYS)])
    collated_sandbox.insert_jobs([(1, key, 0) for key in COLLATION_KEYS])
    pair = DatabasePair(databases.production, collated_sandbox)
    document = report(pair)
    statistics = document["statistics"]
    assert (statistics["matched"], statistics["not_found_in_sandbox"]) == (8, 0)
    assert statistics["not_found_in_production"] == 0
    assert statistics["rows_with_differences"] == 7  # "a" already holds 0
    assert reconcile(pair, "--apply").returncode == 0
    assert collated_sandbox.fab_orders() == {
        (1, key): Decimal(index) for index, key in enumerate(COLLATION_KEYS)
    }


def test_different_table_names_and_schemas_on_each_side(seeded: DatabasePair) -> None:
    """Production and sandbox tables may have different schemas and (quoted) names."""
    seeded.sandbox.execute("CREATE SCHEMA mirror")
    seeded.sandbox.execute('CREATE TABLE mirror."Jobs Copy" (LIKE public.jobs INCLUDING ALL)')
    seeded.sandbox.execute('INSERT INTO mirror."Jobs Copy" SELECT * FROM public.jobs')
    seeded.sandbox.execute("TRUNCATE public.jobs")
    env = {"PROPAGATOR_SANDBOX_TABLE": 'mirror."Jobs Copy"'}
    result = reconcile(seeded, "--apply", **env)
    assert result.returncode == 0, result.stderr
    assert "✓ Applied 2 updates" in result.stdout
    assert seeded.sandbox.fab_orders('mirror."Jobs Copy"')[(1, "A")] == Decimal("510.00")
    assert seeded.sandbox.scalar("SELECT count(*) FROM public.jobs") == 0


def test_production_filter_limits_the_rows_mirrored(databases: DatabasePair) -> None:
    """``production_filter`` leaves filtered-out production rows alone."""
    databases.production.insert_jobs([(1, "A", 510, "red", "draft"), (2, "B", 800, "red", "cut")])
    databases.sandbox.insert_jobs([(1, "A", 500), (2, "B", 750)])
    env = {"PROPAGATOR_PRODUCTION_FILTER": "stage IS DISTINCT FROM 'draft'"}
    document = report(databases, "--apply", **env)
    assert document["statistics"]["production_rows"] == 1
    assert document["statistics"]["updated"] == 1
    assert databases.sandbox.fab_orders() == {(1, "A"): Decimal("500.00"), (2, "B"): 800}


@pytest.mark.parametrize("method", ["checksum", "stream"])
def test_a_production_filter_may_use_percent_and_quoted_separators(
    databases: DatabasePair, method: str
) -> None:
    """``LIKE 'A%'`` stays a pattern and ``';'`` a string, in every statement the filter enters."""
    databases.production.insert_jobs(
        [(1, "A1", 510, "red", "a;b"), (2, "A2", 800, "red", "cut"), (3, "B1", 7, "red", "a;b")]
    )
    databases.sandbox.insert_jobs([(1, "A1", 500), (2, "A2", 750), (3, "B1", 0)])
    env = {"PROPAGATOR_PRODUCTION_FILTER": "release LIKE 'A%' AND stage <> ';'"}
    document = report(databases, "--apply", "--method", method, **env)
    assert document["statistics"]["production_rows"] == 2
    assert document["statistics"]["updated"] == 2
    assert databases.sandbox.fab_orders() == {(1, "A1"): 510, (2, "A2"): 800, (3, "B1"): 0}


@pytest.mark.slow
def test_hundred_thousand_rows(databases: DatabasePair) -> None:
    """On 100,000 rows a dry run prints the seed report and writes nothing; apply converges."""
    fill = (
        "INSERT INTO jobs (job, release, fab_order) "
        "SELECT g, chr(65 + g % 26), g FROM generate_series(1, 100000) AS g"
    )
    databases.production.execute(fill)
    databases.sandbox.execute(fill)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job % 100 = 0")
    databases.sandbox.execute("DELETE FROM jobs WHERE job % 1000 = 7")
    before = checksum(databases.sandbox)

    dry = reconcile(databases)
    assert dry.returncode == 0, dry.stderr
    for line in [
        "MAP PRODUCTION → SANDBOX",
        "⚠ DRY RUN MODE - No changes will be made",
        "✓ Production database connection successful",
        "✓ Sandbox database connection successful",
        "✓ Fetched 100000 jobs from Production database",
        "✓ Fetched 99900 jobs from Sandbox database",
        "MAPPING SUMMARY",
        "  Production Jobs: 100000",
        "  Sandbox Jobs: 99900",
        "  Matched: 99900",
        "  Not Found in Sandbox: 100",
        "  fab_order Differences: 1000",
        "fab_order Updates Needed (1000):",
        "  - 100-W: 101.00 → 100.00",
        "  ... and 990 more",
        "Total updates to apply: 1000",
        "  [DRY RUN] Job 100-W: fab_order 101.00 → 100.00",
        "  ... (1000 total)",
        "✓ Dry run completed successfully",
    ]:
        assert line in dry.stdout.splitlines(), line
    assert checksum(databases.sandbox) == before

    applied = reconcile(databases, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "✓ Applied 1000 updates" in applied.stdout
    assert report(databases)["statistics"]["rows_with_differences"] == 0
