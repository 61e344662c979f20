"""Sync history on two real servers: atomic with its changes, filters, retention, off switch."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from propagator.cli import main
from propagator.core.plan import FieldChange, JobMappingResult, MatchStatus
from propagator.errors import ExitCode, PermanentError
from propagator.services import history as history_service
from propagator.services.history import History
from propagator.services.sync import Connection, Source, SyncSession, converge_keys
from propagator.settings import Settings, load_settings
from tests.helpers import DatabasePair, run_cli

SCHEMA = "propagator"


def settings_for(databases: DatabasePair, **overrides: Any) -> Settings:
    return load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        **overrides,
    )


def history_rows(databases: DatabasePair, where: str = "true") -> list[tuple[Any, ...]]:
    return databases.sandbox.fetchall(
        "SELECT key_label, field, old_value, new_value, source, changed_at, batch_id "
        f"FROM propagator.sync_history WHERE {where} ORDER BY id"
    )


def schema_exists(databases: DatabasePair, schema: str = SCHEMA) -> bool:
    return bool(
        databases.sandbox.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema])
    )


def change(key: tuple[Any, ...], field: str, old: Any, new: Any) -> JobMappingResult:
    return JobMappingResult(key, MatchStatus.MATCHED, (FieldChange(field, old, new),))


def record_rows(
    databases: DatabasePair,
    results: Sequence[JobMappingResult],
    source: Source,
    *,
    changed_at: float | None = None,
) -> None:
    with databases.sandbox.connect() as conn, conn.transaction():
        history_service.record(conn, SCHEMA, results, source, changed_at=changed_at)


def test_setup_is_idempotent_and_versioned(databases: DatabasePair) -> None:
    """`propagator setup` creates the schema once; a second run changes nothing and says so."""
    env = databases.env()
    first = run_cli(["setup"], env)
    assert first.returncode == ExitCode.OK, first.stderr
    assert (
        "now at version 4 (applied 0001_sync_history, 0002_mapping, 0003_refresh_source, "
        "0004_webhook_cursors)" in first.stdout
    )
    second = run_cli(["setup", "--format", "json"], env)
    assert second.returncode == ExitCode.OK, second.stderr
    outcome = json.loads(second.stdout)
    assert outcome["applied"] == []
    assert outcome["version"] == outcome["latest_version"] == 4
    assert databases.sandbox.fetchall("SELECT version, name FROM propagator.schema_version") == [
        (1, "sync_history"),
        (2, "mapping"),
        (3, "refresh_source"),
        (4, "webhook_cursors"),
    ]


def test_setup_uses_an_existing_schema_in_a_custom_place(databases: DatabasePair) -> None:
    """history_schema names the schema; one created beforehand by a DBA is used as it is."""
    databases.sandbox.execute('CREATE SCHEMA "audit trail"')
    result = run_cli(["setup"], databases.env(PROPAGATOR_HISTORY_SCHEMA="audit trail"))
    assert result.returncode == ExitCode.OK, result.stderr
    assert databases.sandbox.scalar('SELECT count(*) FROM "audit trail".sync_history') == 0
    assert not schema_exists(databases)


def test_history_is_written_in_the_batch_transaction_and_only_for_applied_rows(
    databases: DatabasePair,
) -> None:
    """A bisected batch records exactly one row per applied change and none for the rejected row."""
    databases.production.insert_jobs((job, "A", job * 10) for job in range(1, 11))
    databases.sandbox.insert_jobs((job, "A", 0) for job in range(1, 11))
    databases.sandbox.execute("ALTER TABLE jobs ADD CONSTRAINT no_seventy CHECK (fab_order <> 70)")
    settings = settings_for(databases)
    history = History(settings)
    changed_at = time.time() - 2.5
    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.sandbox is not None
        history.setup(session.sandbox)
        assert session.production is not None
        result = converge_keys(
            context,
            session.production,
            session.sandbox,
            [(job, "A") for job in range(1, 11)],
            source="event",
            on_applied=history.hook(changed_at=changed_at),
        )
    assert result.statistics.updated == 9
    assert [failure.key for failure in result.statistics.failures] == [(7, "A")]
    rows = history_rows(databases)
    assert sorted(row[0] for row in rows) == sorted(f"{job}-A" for job in range(1, 11) if job != 7)
    for label, field, old, new, source, recorded_change, _batch in rows:
        job = int(label.split("-")[0])
        assert (field, old, new, source) == ("fab_order", 0, job * 10, "event")
        assert abs(recorded_change.timestamp() - changed_at) < 0.001
    # Each committed part of the bisection is its own transaction, with its own batch id.
    assert len({row[6] for row in rows}) >= 2
    assert history.rows_recorded == 9
    assert databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 7") == 0


def test_a_batch_that_rolls_back_leaves_no_history(databases: DatabasePair) -> None:
    """History and the change commit together: a failure after both are written undoes both."""
    databases.production.insert_jobs([(1, "A", 100)])
    databases.sandbox.insert_jobs([(1, "A", 1)])
    settings = settings_for(databases)
    history = History(settings)
    recording = history.hook()
    assert recording is not None

    def record_then_fail(
        conn: Connection, results: Sequence[JobMappingResult], source: Source
    ) -> None:
        recording(conn, results, source)
        assert conn.execute("SELECT count(*) FROM propagator.sync_history").fetchone() == (1,)
        raise PermanentError("refused after writing")

    with SyncSession(settings) as session:
        context = session.prepare()
        assert session.sandbox is not None
        assert session.production is not None
        history.setup(session.sandbox)
        with pytest.raises(PermanentError):
            converge_keys(
                context,
                session.production,
                session.sandbox,
                [(1, "A")],
                on_applied=record_then_fail,
            )
    assert history_rows(databases) == []
    assert databases.sandbox.scalar("SELECT fab_order FROM jobs") == 1


def test_reconcile_apply_records_every_change_with_source_reconcile(
    databases: DatabasePair,
) -> None:
    """`reconcile --apply` sets history up and records each field it wrote; a dry run, nothing."""
    databases.production.insert_jobs([(1, "A", 12.5, "red"), (2, "B", 20, "blue")])
    databases.sandbox.insert_jobs([(1, "A", 12.5, None), (2, "B", 3, "blue")])
    env = databases.env(PROPAGATOR_FIELD_MAPPINGS="fab_order,paint_color")
    dry = run_cli(["reconcile"], env)
    assert dry.returncode == ExitCode.OK, dry.stderr
    assert not schema_exists(databases)
    applied = run_cli(["reconcile", "--apply"], env)
    assert applied.returncode == ExitCode.OK, applied.stderr
    rows = history_rows(databases)
    assert {row[:6] for row in rows} == {
        ("1-A", "paint_color", None, "red", "reconcile", None),
        ("2-B", "fab_order", 3, 20, "reconcile", None),
    }
    # Decimal scale is kept in the stored JSON, not rounded through a float.
    assert (
        databases.sandbox.scalar(
            "SELECT new_value::text FROM propagator.sync_history WHERE field = 'fab_order'"
        )
        == "20.00"
    )
    again = run_cli(["reconcile", "--apply"], env)
    assert again.returncode == ExitCode.OK, again.stderr
    assert len(history_rows(databases)) == 2


@pytest.fixture
def filled(databases: DatabasePair) -> DatabasePair:
    """Six history rows across keys, fields, sources and ages (two are old)."""
    with databases.sandbox.connect() as conn:
        history_service.setup(conn, SCHEMA)
    now = time.time()
    for key, field, old, new, source in (
        ((10001, "A"), "fab_order", Decimal("1.50"), Decimal("2.00"), "event"),
        ((10001, "A"), "paint_color", None, "red", "event"),
        ((10002, "B"), "fab_order", 5, 6, "reconcile"),
        ((10003, "A-1"), "fab_order", 7, 8, "manual"),
        ((10001, "A"), "fab_order", Decimal("2.00"), Decimal("3.25"), "catchup"),
        ((10004, "C"), "fab_order", 1, 2, "event"),
    ):
        changed_at = now if source == "event" else None
        record_rows(databases, [change(key, field, old, new)], source, changed_at=changed_at)
    databases.sandbox.execute(
        "UPDATE propagator.sync_history SET applied_at = now() - interval '1 hour' "
        "WHERE key_label = '10002-B'"
    )
    databases.sandbox.execute(
        "UPDATE propagator.sync_history SET applied_at = now() - interval '3 days' "
        "WHERE key_label = '10004-C'"
    )
    return databases


def cli_json(
    databases: DatabasePair,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> dict[str, Any]:
    """``propagator history --format json ARGS`` in this process (the parser and the output)."""
    for name, value in databases.env().items():
        monkeypatch.setenv(name, value)
    code = main(["history", "--format", "json", *args])
    captured = capsys.readouterr()
    assert code == ExitCode.OK, captured.err
    return dict(json.loads(captured.out))


def picked(page: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["key_label"], e["field"], e["source"]) for e in page["entries"]]


def test_history_cli_filters(
    filled: DatabasePair, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key (label or JSON), --field, --source, --since/--until, --limit/--before, newest first."""

    def run(*args: str) -> list[tuple[str, str, str]]:
        return picked(cli_json(filled, monkeypatch, capsys, *args))

    assert run("--key", "10001-A") == [
        ("10001-A", "fab_order", "catchup"),
        ("10001-A", "paint_color", "event"),
        ("10001-A", "fab_order", "event"),
    ]
    assert run("--key", '[10001, "A"]') == run("--key", "10001-A")
    assert run("--key", "10003-A-1") == [("10003-A-1", "fab_order", "manual")]
    assert run("--field", "paint_color") == [("10001-A", "paint_color", "event")]
    assert run("--source", "event", "--field", "fab_order") == [
        ("10004-C", "fab_order", "event"),
        ("10001-A", "fab_order", "event"),
    ]
    assert {k for k, _, _ in run("--since", "30m")} == {"10001-A", "10003-A-1"}
    assert run("--until", "2h") == [("10004-C", "fab_order", "event")]
    assert run("--since", "2d", "--until", "30m") == [("10002-B", "fab_order", "reconcile")]
    since_iso = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    assert len(run("--since", since_iso)) == 5
    first = cli_json(filled, monkeypatch, capsys, "--limit", "4")
    assert len(first["entries"]) == 4
    assert first["next_before"] == first["entries"][-1]["id"]
    rest = cli_json(
        filled, monkeypatch, capsys, "--limit", "4", "--before", str(first["next_before"])
    )
    assert len(rest["entries"]) == 2
    assert rest["next_before"] is None
    ids = [e["id"] for e in first["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 6
    entry = cli_json(filled, monkeypatch, capsys, "--key", "10001-A", "--limit", "1")["entries"][0]
    assert (entry["old_value"], entry["new_value"]) == (2.0, 3.25)
    assert entry["changed_at"] is None
    assert entry["lag_seconds"] is None


def test_history_cli_prints_a_table_and_refuses_bad_input(filled: DatabasePair) -> None:
    """The table shows stored values exactly; bad filters are one line and exit code 2."""
    env = filled.env()
    table = run_cli(["history", "--key", "10001-A"], env)
    assert table.returncode == ExitCode.OK, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "APPLIED", "SOURCE", "KEY", "FIELD", "OLD", "NEW", "LAG"]
    assert len(lines) == 4
    assert "1.50" in lines[3]
    assert "2.00" in lines[3]
    assert "catchup" in lines[1]
    assert '"red"' in lines[2]
    assert "null" in lines[2]
    for args, fragment in (
        (["--since", "yesterday"], "neither an ISO time"),
        (["--limit", "0"], "limit must be between"),
        (["--key", "[1, "], "not a valid JSON array"),
        (["--since", "1h", "--until", "2h"], "since is later than until"),
    ):
        bad = run_cli(["history", *args], env)
        assert bad.returncode == ExitCode.USAGE, (args, bad.stderr)
        assert fragment in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        assert "Traceback" not in bad.stderr


def test_history_before_setup_is_one_clear_line(databases: DatabasePair) -> None:
    """Reading history where it was never set up says to run `propagator setup`."""
    result = run_cli(["history"], databases.env())
    assert result.returncode == ExitCode.USAGE
    assert "is not set up: run `propagator setup`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_retention_prunes_old_rows_in_batches(databases: DatabasePair) -> None:
    """Rows older than the retention go, 5,000 per statement; recent rows stay."""
    with databases.sandbox.connect() as conn:
        history_service.setup(conn, SCHEMA)
    old = [change((job, "A"), "fab_order", 0, job) for job in range(12_345)]
    record_rows(databases, old, "reconcile")
    databases.sandbox.execute(
        "UPDATE propagator.sync_history SET applied_at = now() - interval '40 days'"
    )
    record_rows(databases, [change((job, "B"), "fab_order", 0, job) for job in range(10)], "event")
    settings = settings_for(databases, history_retention="30d")
    history = History(settings)
    with databases.sandbox.connect() as conn:
        partial = history.prune(conn, max_statements=1)
        assert partial is not None
        assert (partial.deleted, partial.statements, partial.complete) == (5_000, 1, False)
        assert history.prune_due()  # an unfinished prune continues at the next turn
        rest = history.prune(conn)
        assert rest is not None
        assert (rest.deleted, rest.statements, rest.complete) == (7_345, 2, True)
        assert not history.prune_due()
        assert history.prune(conn) is None  # not due again until the interval passes
    assert databases.sandbox.fetchall(
        "SELECT count(*), bool_and(key_label LIKE '%-B') FROM propagator.sync_history"
    ) == [(10, True)]


def test_history_disabled_writes_nothing_to_the_sandbox_schema(databases: DatabasePair) -> None:
    """history_enabled=false: setup is a no-op, no hook, and reconcile --apply adds no schema."""
    databases.production.insert_jobs([(1, "A", 5)])
    databases.sandbox.insert_jobs([(1, "A", 1)])
    env = databases.env(PROPAGATOR_HISTORY_ENABLED="false")
    setup = run_cli(["setup"], env)
    assert setup.returncode == ExitCode.OK, setup.stderr
    assert "history is disabled" in setup.stdout
    applied = run_cli(["reconcile", "--apply"], env)
    assert applied.returncode == ExitCode.OK, applied.stderr
    assert databases.sandbox.scalar("SELECT fab_order FROM jobs") == 5
    assert not schema_exists(databases)
    history = History(settings_for(databases, history_enabled=False))
    assert history.hook() is None
    assert history.describe() == {"enabled": False}
