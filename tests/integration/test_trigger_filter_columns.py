"""A production filter's columns are watched: changing one can bring a row into a mapping."""

from __future__ import annotations

import subprocess
from pathlib import Path

from propagator.errors import ExitCode
from propagator.services import triggers
from propagator.settings import load_configuration
from tests.helpers import DatabasePair, mappings_toml, run_cli
from tests.integration.trigger_support import Listener


def write_config(tmp_path: Path, production_filter: str) -> Path:
    path = tmp_path / "propagator.toml"
    path.write_text(
        mappings_toml(
            [{"name": "jobs", "field_mappings": ["fab_order"]}],
            production_filter=production_filter,
        )
    )
    return path


def cli(databases: DatabasePair, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(["triggers", *args, "--config", str(config)], databases.env())
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    return result


def test_a_change_to_a_filter_column_alone_is_announced(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """stage is read only by the filter: moving a row into it notifies its key; a change
    to a column neither mapped nor filtered still notifies nothing."""
    config = write_config(tmp_path, "stage <> 'archived' AND \"paint_color\" IS NOT NULL")
    installed = cli(databases, config, "install").stdout
    assert "watching job, release, fab_order, paint_color, stage)" in installed
    databases.production.insert_jobs([(10001, "A", 5, "red", "archived")])
    listener = Listener(databases.production, "propagator_jobs")
    try:
        databases.production.execute("UPDATE jobs SET stage = 'cut'")
        assert listener.keys() == [[10001, "A"]]
        databases.production.execute("UPDATE jobs SET paint_color = 'blue'")
        assert listener.keys() == [[10001, "A"]]
        databases.production.execute("UPDATE jobs SET stage = 'cut'")  # no real change
        assert listener.payloads() == []
    finally:
        listener.conn.close()
    assert "current" in cli(databases, config, "status", "--check").stdout


def test_the_script_and_status_agree_on_the_filter_columns(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """`triggers sql` asks the catalog too: applied by hand, status finds it current."""
    config = write_config(tmp_path, "stage = 'cut'")
    script = cli(databases, config, "sql").stdout
    assert "stage" in script
    with databases.production.connect() as conn:
        conn.execute(script.encode())
    cli(databases, config, "status", "--check")
    configuration = load_configuration(config)
    (mapping,) = configuration.mappings
    with databases.production.connect() as conn:
        spec = triggers.with_filter_columns(conn, triggers.trigger_spec(mapping))
    assert spec.watched_columns == ("job", "release", "fab_order", "stage")
    # Nothing of the probe stays behind.
    assert (
        databases.production.scalar(
            "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'propagator_filter_columns'"
        )
        == 0
    )
