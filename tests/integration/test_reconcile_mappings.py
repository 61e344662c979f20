"""``reconcile``, ``check`` and ``setup`` over named [[mappings]], through the CLI a user runs.

Three mappings: ``jobs`` and ``orders`` (two production tables into one sandbox)
and ``jobs_qa`` (the jobs table into a second sandbox database on the sandbox server).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import TEMPLATE, Server
from tests.helpers import ORDERS_MAPPING, Database, DatabasePair, mappings_toml, run_cli

ORDERS_DDL = "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)"
SECRET = "qa-Secret-9"  # in the second sandbox's URL; a trust server ignores it
HEADINGS = ["== mapping jobs ==", "== mapping orders ==", "== mapping jobs_qa =="]


@dataclass
class Setup:
    """The two databases of the fixture, the second sandbox, and the config file naming them."""

    databases: DatabasePair
    qa: Database
    config: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``propagator ARGS --config FILE``, asserting it never shows a traceback or a secret."""
        result = run_cli([*args, "--config", str(self.config)], self.databases.env())
        assert "Traceback" not in result.stdout + result.stderr
        assert SECRET not in result.stdout + result.stderr
        return result

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("reconcile", *args)

    def document(self, *args: str) -> dict[str, Any]:
        result = self.reconcile("--format", "json", *args)
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    def orders(self) -> dict[int, str | None]:
        rows = self.databases.sandbox.fetchall("SELECT id, status FROM orders")
        return dict(rows)


def _with_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _config(qa: Database) -> str:
    return mappings_toml(
        [
            {"name": "jobs"},
            ORDERS_MAPPING,
            {"name": "jobs_qa", "sandbox_database_url": _with_password(qa.url)},
        ],
        report_limit=5,
    )


@pytest.fixture
def qa_sandbox(sandbox_server: Server) -> Iterator[Database]:
    """A second sandbox database on the sandbox server, with the seed-shaped ``jobs``."""
    name = f"t_qa_{uuid.uuid4().hex[:12]}"
    database = sandbox_server.create_database(name, TEMPLATE)
    try:
        yield database
    finally:
        sandbox_server.drop_database(name)


@pytest.fixture
def three(databases: DatabasePair, qa_sandbox: Database, tmp_path: Path) -> Setup:
    """Every mapping with differences: 2 in jobs, 1 in orders, 1 in jobs_qa."""
    databases.production.insert_jobs([(1, "A", 510), (2, "B", 800), (3, "C", 100)])
    databases.sandbox.insert_jobs([(1, "A", 500), (2, "B", 750), (3, "C", 100)])
    qa_sandbox.insert_jobs([(1, "A", 510), (2, "B", 800), (3, "C", 1)])
    databases.production.execute(ORDERS_DDL)
    databases.sandbox.execute(ORDERS_DDL)
    databases.production.execute("INSERT INTO orders VALUES (1, 'shipped', 10), (2, 'open', 20)")
    databases.sandbox.execute("INSERT INTO orders VALUES (1, 'open', 0), (2, 'open', 0)")
    config = tmp_path / "propagator.toml"
    config.write_text(_config(qa_sandbox))
    return Setup(databases, qa_sandbox, config)


def _sections(stdout: str) -> list[str]:
    """The headings of the output, in order."""
    return [line for line in stdout.splitlines() if line.startswith("== ")]


def test_dry_run_reports_each_mapping_under_its_name_then_a_total(three: Setup) -> None:
    result = three.reconcile()
    assert result.returncode == 0, result.stderr
    assert _sections(result.stdout) == [
        *HEADINGS,
        "== total: 3 mappings, 8 rows compared, 4 differences, 0 updated, 0 failed ==",
    ]
    jobs, orders, qa = result.stdout.split("== mapping ")[1:]
    assert "[DRY RUN] Job 1-A: fab_order 500.00 → 510" in jobs
    assert "[DRY RUN] Job 1: status open → shipped" in orders
    assert "[DRY RUN] Job 3-C: fab_order 1.00 → 100" in qa
    assert all("✓ Dry run completed successfully" in part for part in (jobs, orders, qa))
    assert result.stderr == ""
    assert three.orders() == {1: "open", 2: "open"}  # nothing written


def test_check_exits_1_while_any_mapping_differs_and_apply_fixes_all(three: Setup) -> None:
    assert three.reconcile("--check").returncode == 1
    applied = three.reconcile("--apply")
    assert applied.returncode == 0, applied.stderr
    assert _sections(applied.stdout)[-1] == (
        "== total: 3 mappings, 8 rows compared, 4 differences, 4 updated, 0 failed =="
    )
    assert three.databases.sandbox.fab_orders() == {
        (1, "A"): Decimal("510.00"),
        (2, "B"): Decimal("800.00"),
        (3, "C"): Decimal("100.00"),
    }
    assert three.qa.fab_orders()[(3, "C")] == Decimal("100.00")
    assert three.orders() == {1: "shipped", 2: "open"}
    again = three.reconcile("--check")
    assert again.returncode == 0, again.stderr
    assert _sections(again.stdout)[-1].endswith(" 0 differences, 0 updated, 0 failed ==")


def test_mapping_option_selects_one(three: Setup) -> None:
    result = three.reconcile("--apply", "--mapping", "orders")
    assert result.returncode == 0, result.stderr
    assert _sections(result.stdout) == [
        "== mapping orders ==",
        "== total: 1 mapping, 2 rows compared, 1 difference, 1 updated, 0 failed ==",
    ]
    assert three.orders() == {1: "shipped", 2: "open"}
    assert three.databases.sandbox.fab_orders()[(1, "A")] == Decimal("500.00")  # not selected
    assert three.qa.fab_orders()[(3, "C")] == Decimal("1.00")


def test_an_unknown_mapping_is_one_line_and_exit_2(three: Setup) -> None:
    for command in (["reconcile"], ["check"], ["setup"]):
        result = three.run(*command, "--mapping", "nope")
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "propagator: error: unknown mapping 'nope' (PROPAGATOR_MAPPINGS or --mapping); "
            "the mappings are: jobs, orders, jobs_qa"
        ]
        assert result.stdout == ""


def test_json_is_one_document_naming_each_mapping(three: Setup) -> None:
    document = three.document("--check")
    assert [entry["mapping"] for entry in document["mappings"]] == ["jobs", "orders", "jobs_qa"]
    assert [entry["exit_code"] for entry in document["mappings"]] == [1, 1, 1]
    jobs, orders, qa = (entry["report"] for entry in document["mappings"])
    assert jobs["statistics"]["rows_with_differences"] == 2
    assert [change["label"] for change in orders["changes"]] == ["1"]
    assert qa["sandbox"].endswith(f"/{three.qa.name}")
    assert "***" in qa["sandbox"]
    assert document["total"] == {
        "mappings": 3,
        "in_error": [],
        "rows_compared": 8,
        "rows_with_differences": 4,
        "updated": 0,
        "failed": 0,
        "busy": 0,
        "exit_code": 1,
    }


def test_a_failing_mapping_does_not_stop_the_others(three: Setup) -> None:
    """A sandbox column dropped under one mapping: its error, the others applied, exit 2."""
    three.databases.sandbox.execute("ALTER TABLE orders DROP COLUMN status")
    result = three.reconcile("--apply", "--check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "propagator: error: mapping orders: mapped column 'status' does not exist in the "
        "sandbox table public.orders"
    ]
    assert _sections(result.stdout) == [
        *HEADINGS,
        "== total: 3 mappings (1 in error: orders), 6 rows compared, 3 differences, "
        "3 updated, 0 failed ==",
    ]
    assert three.databases.sandbox.fab_orders()[(1, "A")] == Decimal("510.00")
    assert three.qa.fab_orders()[(3, "C")] == Decimal("100.00")

    document = three.document("--check")
    assert [entry["exit_code"] for entry in document["mappings"]] == [0, 2, 0]
    assert document["mappings"][1]["error"].startswith("mapped column 'status' does not exist")
    assert "report" not in document["mappings"][1]
    assert document["total"]["in_error"] == ["orders"]
    assert document["total"]["exit_code"] == 2


def test_an_unreachable_sandbox_is_exit_3_and_differences_still_exit_1(
    three: Setup, sandbox_server: Server
) -> None:
    """The worst code wins: an unreachable mapping (3) over differences (1) elsewhere."""
    sandbox_server.drop_database(three.qa.name)
    result = three.reconcile("--check")
    assert result.returncode == 3
    (error,) = result.stderr.splitlines()
    assert error.startswith("propagator: error: mapping jobs_qa: ")
    assert "***" in error
    assert _sections(result.stdout)[:3] == HEADINGS


def test_check_runs_every_mapping_and_shows_their_settings_masked(three: Setup) -> None:
    result = three.run("check", "--show-settings")
    assert result.returncode == 0, result.stderr
    assert _sections(result.stdout) == HEADINGS
    assert result.stdout.count("✓ sandbox: ") == 3
    assert "✓ key columns: id (" in result.stdout
    settings, rest = result.stdout.split("\n}\n", 1)
    assert json.loads(settings + "}")["production_table"] == "public.jobs"
    shown = json.loads(rest[: rest.index("\n}\n") + 2])["mappings"]
    assert list(shown) == ["jobs", "orders", "jobs_qa"]
    assert shown["orders"]["key_columns"] == ["id"]
    assert shown["orders"]["channel"] == "propagator_orders"
    assert "***" in shown["jobs_qa"]["sandbox_database_url"]

    three.databases.sandbox.execute("ALTER TABLE orders DROP COLUMN status")
    failing = three.run("check")
    assert failing.returncode == 2
    assert failing.stderr.startswith("propagator: error: mapping orders: mapped column 'status'")
    assert failing.stdout.count("✓ key columns: ") == 2  # jobs and jobs_qa still checked


def test_setup_once_per_distinct_sandbox(three: Setup) -> None:
    result = three.run("setup")
    assert result.returncode == 0, result.stderr
    headings = _sections(result.stdout)
    assert len(headings) == 2
    assert headings[0].startswith("== history schema propagator in postgresql://")
    assert headings[0].endswith(f"/{three.databases.sandbox.name} for mappings jobs, orders ==")
    assert headings[1].endswith(f"/{three.qa.name} for mapping jobs_qa ==")
    for database in (three.databases.sandbox, three.qa):
        assert database.scalar("SELECT to_regnamespace('propagator') IS NOT NULL") is True
    again = json.loads(three.run("setup", "--format", "json").stdout)
    assert [entry["mappings"] for entry in again["sandboxes"]] == [["jobs", "orders"], ["jobs_qa"]]
    assert all("up to date" in entry["message"] for entry in again["sandboxes"])
