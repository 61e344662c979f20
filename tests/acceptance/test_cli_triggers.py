"""``propagator triggers`` as a DBA runs it: printed SQL, install, status, uninstall, errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from propagator.demo.embedded import free_port
from propagator.errors import ExitCode
from tests.helpers import DatabasePair, run_cli


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPAGATOR_")
        and key not in ("PRODUCTION_DATABASE_URL", "SANDBOX_DATABASE_URL")
    }
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_cli(["triggers", *args], env)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("propagator: error: ")
    return lines[0]


def test_printed_sql_needs_no_database_and_applies_by_hand(databases: DatabasePair) -> None:
    """`triggers sql` prints a complete script offline; applied by hand, status says current."""
    printed = cli(["sql"], clean_env())
    assert printed.returncode == ExitCode.OK, printed.stderr
    script = printed.stdout
    assert script.startswith("BEGIN;")
    assert script.rstrip().endswith("COMMIT;")
    # INSERT, DELETE and their sender outright; the UPDATE pair in the form the table allows.
    assert [line for line in script.splitlines() if line.startswith("CREATE TRIGGER")] == [
        'CREATE TRIGGER "propagator_jobs_insert"',
        'CREATE TRIGGER "propagator_jobs_delete"',
        'CREATE TRIGGER "propagator_jobs_send"',
    ]
    assert script.count('AFTER UPDATE OF "job", "release", "fab_order" ON') == 2
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        conn.execute(script.encode())
    status = cli(["status", "--check"], databases.env())
    assert status.returncode == ExitCode.OK, status.stdout + status.stderr
    assert "current" in status.stdout
    removal = cli(["sql", "--uninstall"], clean_env()).stdout
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        conn.execute(removal.encode())
    assert cli(["status", "--check"], databases.env()).returncode == ExitCode.DIFFERENCES_FOUND


def test_printed_sql_refuses_a_column_without_equality_unless_told(
    databases: DatabasePair,
) -> None:
    """Offline, json/point columns are unknown: the script refuses them, naming the option."""
    databases.production.execute(
        "CREATE TABLE public.docs (job int, release text, doc json, spot point, "
        '"it\'s" xml, UNIQUE (job, release))'
    )
    env = clean_env(
        PROPAGATOR_PRODUCTION_TABLE="public.docs",
        PROPAGATOR_FIELD_MAPPINGS=json.dumps(["doc", "spot", "it's"]),
    )
    script = cli(["sql"], env).stdout
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        try:
            conn.execute(script.encode())
        except psycopg.errors.RaiseException as error:
            refused = error
            conn.execute("ROLLBACK")  # as psql does at the script's COMMIT
        else:
            raise AssertionError("the script installed triggers that would resync every UPDATE")
        assert "watched column(s) doc, spot, it's have no equality operator" in str(refused)
        hint = refused.diag.message_hint or ""
        suggested = hint.split("`")[3]  # the command, quoted for a POSIX shell
        assert suggested.startswith("propagator triggers sql ")
        assert shlex.split(suggested)[3:] == [
            "--compare-as-jsonb", "doc", "--compare-as-jsonb", "spot", "--compare-as-jsonb", "it's"
        ]  # fmt: skip
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
        ).fetchone() == (0,)
        told = cli(shlex.split(suggested)[2:], env)
        assert told.returncode == ExitCode.OK, told.stderr
        conn.execute(told.stdout.encode())
        conn.execute("INSERT INTO docs VALUES (1, 'A', '{\"a\": 1}', '(1,2)')")
        conn.execute("LISTEN propagator_jobs")
        conn.execute("UPDATE docs SET doc = '{\"a\": 2}', spot = '(3,4)'")
        conn.execute("UPDATE docs SET doc = doc, spot = spot")  # unchanged: nothing sent
        payloads = [json.loads(n.payload) for n in conn.notifies(timeout=1, stop_after=2)]
    assert [p.get("k") for p in payloads] == [[[1, "A"]]]
    wrong = cli(["sql", "--compare-as-jsonb", "note"], env)
    assert wrong.returncode == ExitCode.USAGE
    assert "'note' is not a watched column" in one_error_line(wrong)


def test_install_status_uninstall_round_trip(databases: DatabasePair) -> None:
    """Install, a JSON status naming version/channel/columns, uninstall, and their exit codes."""
    env = databases.env()
    installed = cli(["install"], env)
    assert installed.returncode == ExitCode.OK, installed.stderr
    assert "installed on public.jobs" in installed.stdout
    assert cli(["install"], env).returncode == ExitCode.OK
    status = cli(["status", "--format", "json"], env)
    document = json.loads(status.stdout)
    assert document["installed"]
    assert document["current"]
    assert document["version"] == document["expected_version"]
    assert document["channel"] == "propagator_jobs"
    assert document["watched_columns"] == ["job", "release", "fab_order"]
    drifted = cli(["status", "--check"], {**env, "PROPAGATOR_CHANNEL": "elsewhere"})
    assert drifted.returncode == ExitCode.DIFFERENCES_FOUND
    assert "elsewhere" in drifted.stdout
    removed = cli(["uninstall"], env)
    assert removed.returncode == ExitCode.OK, removed.stderr
    after = cli(["status", "--check"], env)
    assert after.returncode == ExitCode.DIFFERENCES_FOUND
    assert "no propagator triggers" in after.stdout


def test_a_missing_table_is_one_line_and_exit_2(databases: DatabasePair) -> None:
    """Installing on a table that does not exist fails with one line naming it."""
    result = cli(["install"], databases.env(PROPAGATOR_PRODUCTION_TABLE="public.missing"))
    assert result.returncode == ExitCode.USAGE
    assert "public.missing does not exist" in one_error_line(result)


def test_a_missing_mapped_column_is_refused(databases: DatabasePair) -> None:
    """A trigger watching a column the table lacks is never installed."""
    result = cli(["install"], databases.env(PROPAGATOR_FIELD_MAPPINGS="no_such_column"))
    assert result.returncode == ExitCode.USAGE
    assert "no_such_column" in one_error_line(result)
    assert (
        databases.production.scalar("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    )


def test_permission_denied_is_one_line_and_exit_2(databases: DatabasePair) -> None:
    """A role that does not own the table gets a clear refusal, not a traceback."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    production = databases.production
    production.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)).as_string(None))
    try:
        production.execute(
            sql.SQL("GRANT SELECT ON public.jobs TO {}")
            .format(sql.Identifier(role))
            .as_string(None)
        )
        parts = urlsplit(production.url)
        url = urlunsplit(
            (parts.scheme, f"{role}@{parts.hostname}:{parts.port}", parts.path, "", "")
        )
        result = cli(["install"], databases.env(PRODUCTION_DATABASE_URL=url))
        assert result.returncode == ExitCode.USAGE
        line = one_error_line(result)
        assert "permission denied" in line or "must be owner" in line
        assert production.scalar("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") == 0
    finally:
        production.execute(
            sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)).as_string(None)
        )


def test_an_unreachable_database_is_exit_3_with_the_password_masked() -> None:
    """No server: exit 3, one line, and the password never printed."""
    url = f"postgresql://dba:s3cret-pw@127.0.0.1:{free_port()}/app"
    result = cli(["status"], clean_env(PRODUCTION_DATABASE_URL=url))
    assert result.returncode == ExitCode.DATABASE_UNAVAILABLE
    line = one_error_line(result)
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "***" in line
