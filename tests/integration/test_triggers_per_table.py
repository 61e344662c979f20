"""Named mappings share their production table's one trigger set, as a DBA sees it.

Three mappings: ``jobs`` and ``jobs_qa`` read ``public.jobs`` into two sandboxes
(fab_order into one, paint_color into the other), ``orders`` reads
``public.orders``. ``propagator triggers`` installs one trigger set per table,
watching every column any mapping of the table reads. The triggers never
connect to a sandbox, so the second sandbox is only another database's URL.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from propagator.errors import ExitCode
from propagator.services import triggers
from propagator.settings import load_configuration, watched_tables
from tests.helpers import ORDERS_MAPPING, DatabasePair, mappings_toml, run_cli
from tests.integration.trigger_support import Listener

ORDERS_DDL = """
CREATE TABLE public.orders (
    id integer PRIMARY KEY,
    status text,
    total numeric(12, 2),
    note text
)
"""

TRIGGER_COUNTS = """
SELECT c.relname, count(*) FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal GROUP BY c.relname ORDER BY c.relname
"""

PROPAGATOR_FUNCTIONS = "SELECT count(*) FROM pg_catalog.pg_proc WHERE proname LIKE 'propagator_%'"


def config_text(
    qa_sandbox_url: str, orders_columns: tuple[str, ...] = ("status", "total->amount")
) -> str:
    return mappings_toml(
        [
            {"name": "jobs", "field_mappings": ["fab_order"]},
            {
                "name": "jobs_qa",
                "sandbox_database_url": qa_sandbox_url,
                "field_mappings": ["paint_color->color"],
            },
            {**ORDERS_MAPPING, "field_mappings": list(orders_columns)},
        ]
    )


@pytest.fixture
def config(databases: DatabasePair, tmp_path: Path) -> Path:
    """The three mappings' file, with ``public.orders`` on production."""
    databases.production.execute(ORDERS_DDL)
    path = tmp_path / "propagator.toml"
    qa_sandbox = databases.sandbox.url.rsplit("/", 1)[0] + "/qa_sandbox"
    path.write_text(config_text(qa_sandbox))
    return path


def cli(
    databases: DatabasePair, config: Path, *args: str, expect: int = ExitCode.OK
) -> subprocess.CompletedProcess[str]:
    result = run_cli(["triggers", *args, "--config", str(config)], databases.env())
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def trigger_counts(databases: DatabasePair) -> dict[str, int]:
    return {str(name): int(count) for name, count in databases.production.fetchall(TRIGGER_COUNTS)}


def test_install_puts_one_trigger_set_on_each_production_table(
    databases: DatabasePair, config: Path
) -> None:
    """Five triggers on jobs (for two mappings) and five on orders, again after a reinstall."""
    installed = cli(databases, config, "install").stdout
    lines = installed.splitlines()
    assert lines[0] == "public.jobs (mappings: jobs, jobs_qa)"
    assert lines[1].startswith("✓ triggers installed on public.jobs (")
    assert lines[1].endswith(
        "channel propagator_jobs, watching job, release, fab_order, paint_color)"
    )
    assert lines[2] == "public.orders (mappings: orders)"
    assert lines[3].endswith("channel propagator_orders, watching id, status, total)")
    assert trigger_counts(databases) == {"jobs": 5, "orders": 5}
    assert databases.production.scalar(PROPAGATOR_FUNCTIONS) == 4
    cli(databases, config, "install")
    assert trigger_counts(databases) == {"jobs": 5, "orders": 5}


def test_the_jobs_triggers_watch_the_columns_of_both_mappings(
    databases: DatabasePair, config: Path
) -> None:
    """A column only jobs_qa reads sends one notification; a column nobody reads sends none."""
    cli(databases, config, "install")
    jobs = Listener(databases.production, "propagator_jobs")
    orders = Listener(databases.production, "propagator_orders")
    try:
        databases.production.insert_jobs([(10001, "A", 5, "red", "cut")])
        databases.production.execute("INSERT INTO orders VALUES (1, 'open', 10, 'x')")
        assert jobs.keys() == [[10001, "A"]]
        assert orders.keys() == [[1]]
        databases.production.execute("UPDATE jobs SET paint_color = 'blue'")
        assert jobs.keys() == [[10001, "A"]]
        databases.production.execute("UPDATE jobs SET fab_order = 6")
        assert jobs.keys() == [[10001, "A"]]
        databases.production.execute("UPDATE jobs SET stage = 'weld'")
        databases.production.execute("UPDATE orders SET note = 'y'")
        assert jobs.payloads() == []
        assert orders.payloads() == []
        databases.production.execute("UPDATE orders SET total = 11")
        assert orders.keys() == [[1]]
        assert jobs.payloads() == []
    finally:
        jobs.conn.close()
        orders.conn.close()


def test_status_reports_each_table_and_checks_them_all(
    databases: DatabasePair, config: Path
) -> None:
    """Headings per table, a JSON list naming table and mappings, exit 1 if any is stale."""
    cli(databases, config, "install")
    text = cli(databases, config, "status", "--check").stdout
    assert "public.jobs (mappings: jobs, jobs_qa)\n✓ triggers on public.jobs: current" in text
    assert "public.orders (mappings: orders)\n✓ triggers on public.orders: current" in text
    documents = json.loads(cli(databases, config, "status", "--format", "json").stdout)
    assert [(d["table"], d["mappings"], d["current"]) for d in documents] == [
        ("public.jobs", ["jobs", "jobs_qa"], True),
        ("public.orders", ["orders"], True),
    ]
    assert documents[0]["watched_columns"] == ["job", "release", "fab_order", "paint_color"]
    assert documents[1]["channel"] == "propagator_orders"
    cli(databases, config, "uninstall", "--mapping", "orders")
    stale = cli(databases, config, "status", "--check", expect=ExitCode.DIFFERENCES_FOUND).stdout
    assert "✓ triggers on public.jobs: current" in stale
    assert "✗ no propagator triggers on public.orders" in stale
    documents = json.loads(
        cli(databases, config, "status", "--check", "--format", "json", expect=1).stdout
    )
    assert [(d["table"], d["installed"]) for d in documents] == [
        ("public.jobs", True),
        ("public.orders", False),
    ]


def test_a_selected_mapping_limits_the_command_to_its_table(
    databases: DatabasePair, config: Path
) -> None:
    """``--mapping orders`` touches orders alone, with the output of a single table."""
    installed = cli(databases, config, "install", "--mapping", "orders").stdout
    assert installed == (
        "✓ triggers installed on public.orders (version "
        f"{triggers.TRIGGER_VERSION}, channel propagator_orders, watching id, status, total)\n"
    )
    assert trigger_counts(databases) == {"orders": 5}
    document = json.loads(
        cli(databases, config, "status", "--mapping", "orders", "--format", "json").stdout
    )
    assert (document["table"], document["current"]) == ("public.orders", True)
    assert "mappings" not in document


def test_one_mapping_installs_for_every_mapping_of_its_table(
    databases: DatabasePair, config: Path
) -> None:
    """Installing for ``jobs`` alone still announces paint_color, which jobs_qa reads."""
    cli(databases, config, "install", "--mapping", "jobs")
    assert trigger_counts(databases) == {"jobs": 5}
    cli(databases, config, "status", "--mapping", "jobs_qa", "--check")
    listener = Listener(databases.production, "propagator_jobs")
    try:
        databases.production.insert_jobs([(1, "A", 5, "red", "cut")])
        listener.payloads()
        databases.production.execute("UPDATE jobs SET paint_color = 'blue'")
        assert listener.keys() == [[1, "A"]]
    finally:
        listener.conn.close()


def test_uninstall_removes_every_tables_triggers(databases: DatabasePair, config: Path) -> None:
    cli(databases, config, "install")
    removed = cli(databases, config, "uninstall").stdout
    assert "✓ triggers removed from public.jobs" in removed
    assert "✓ triggers removed from public.orders" in removed
    assert trigger_counts(databases) == {}
    assert databases.production.scalar(PROPAGATOR_FUNCTIONS) == 0


def test_printed_sql_is_one_runnable_script_per_table(
    databases: DatabasePair, config: Path
) -> None:
    """Each table's script under its heading comment, applied one at a time by hand."""
    printed = cli(databases, config, "sql").stdout
    headings = [line for line in printed.splitlines() if line.startswith("-- public.")]
    assert headings == [
        "-- public.jobs (mappings: jobs, jobs_qa)",
        "-- public.orders (mappings: orders)",
    ]
    jobs_script, orders_script = printed.split(headings[1] + "\n")
    for script in (jobs_script, orders_script):
        body = script.removeprefix(headings[0] + "\n").strip()
        assert body.startswith("BEGIN;")
        assert body.endswith("COMMIT;")
        with psycopg.connect(databases.production.url, autocommit=True) as conn:
            conn.execute(body.encode())
    cli(databases, config, "status", "--check")
    removal = cli(databases, config, "sql", "--uninstall").stdout
    assert removal.count("BEGIN;") == 2
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        for script in removal.split("-- public.orders (mappings: orders)\n"):
            conn.execute(script.encode())
    assert trigger_counts(databases) == {}


def test_a_refused_table_leaves_every_table_as_it_was(
    databases: DatabasePair, config: Path
) -> None:
    """A mapped column orders lacks: one line naming it, exit 2, and no triggers on jobs either."""
    qa_sandbox = databases.sandbox.url.rsplit("/", 1)[0] + "/qa_sandbox"
    config.write_text(config_text(qa_sandbox, ("status", "missing_column")))
    result = cli(databases, config, "install", expect=ExitCode.USAGE)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("propagator: error: public.orders: ")
    assert "missing_column" in line
    assert trigger_counts(databases) == {}


def test_the_library_installs_a_watched_table_as_the_cli_does(
    databases: DatabasePair, config: Path
) -> None:
    """``triggers.install`` takes a table and its mappings; status agrees with the CLI's."""
    configuration = load_configuration(config, production_database_url=databases.production.url)
    jobs_table, orders_table = watched_tables(configuration.mappings)
    with psycopg.connect(databases.production.url) as conn:
        triggers.install(conn, jobs_table)
        state = triggers.status(conn, jobs_table)
        assert state.current, state.problems
        assert state.watched_columns == ("job", "release", "fab_order", "paint_color")
        assert not triggers.status(conn, orders_table).installed
    assert trigger_counts(databases) == {"jobs": 5}
