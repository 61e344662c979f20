"""The database roles from ``deploy/sql/`` are enough to run propagator, and no more.

The role scripts are run with the real ``psql`` against the two real servers;
then the CLI runs as those roles, as it does in production, and the same roles
are shown to be refused everywhere outside the mapped columns.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

from propagator.demo.embedded import binary_dir, free_port
from tests.conftest import Server
from tests.helpers import Database, DatabasePair, run_cli, wait_until

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"
PASSWORD = "lp-secret-Pa55"


def psql(url: str, script: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run a deploy script the way a DBA would (``psql -f``), failing on its first error."""
    command = [str(binary_dir() / "psql"), "-X", "-q", "-d", url, "-f", str(script)]
    for name, value in variables.items():
        command[1:1] = ["-v", f"{name}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result


def url_as(database: Database, role: str, password: str) -> str:
    """The database's URL, logging in as ``role``."""
    parts = urlsplit(database.url)
    netloc = f"{quote(role)}:{quote(password)}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass
class Grants:
    """A least-privilege role on both servers, and the URLs that log in as it."""

    role: str
    production_url: str
    sandbox_url: str

    def env(self, pair: DatabasePair, **extra: str) -> dict[str, str]:
        settings = {
            "PRODUCTION_DATABASE_URL": self.production_url,
            "SANDBOX_DATABASE_URL": self.sandbox_url,
            "PROPAGATOR_HISTORY_ENABLED": "false",
        }
        return pair.env(**{**settings, **extra})


def _drop_role(server: Server, database: Database, role: str) -> None:
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with server.admin() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def grants(
    databases: DatabasePair, production_server: Server, sandbox_server: Server
) -> Iterator[Grants]:
    """One role, created on both servers by the deploy scripts, dropped afterwards."""
    yield from _scripted_role(databases, production_server, sandbox_server)


@pytest.fixture
def logical_grants(
    logical_databases: DatabasePair, logical_server: Server, sandbox_server: Server
) -> Iterator[Grants]:
    """``grants`` on a production server with wal_level = logical, for logical capture."""
    yield from _scripted_role(logical_databases, logical_server, sandbox_server, capture="logical")


def _scripted_role(
    databases: DatabasePair, production: Server, sandbox: Server, **production_options: str
) -> Iterator[Grants]:
    role = f"propagator_lp_{uuid.uuid4().hex[:8]}"
    psql(
        databases.production.url,
        SQL_DIR / "production_roles.sql",
        role=role,
        password=PASSWORD,
        **production_options,
    )
    psql(
        databases.sandbox.url,
        SQL_DIR / "sandbox_roles.sql",
        role=role,
        password=PASSWORD,
        update_columns="fab_order",
    )
    try:
        yield Grants(
            role,
            url_as(databases.production, role, PASSWORD),
            url_as(databases.sandbox, role, PASSWORD),
        )
    finally:
        _drop_role(production, databases.production, role)
        _drop_role(sandbox, databases.sandbox, role)


def _seed(databases: DatabasePair) -> None:
    databases.production.insert_jobs(
        [(job, "A", Decimal(job * 10), "red", "cut") for job in range(1, 51)]
    )
    databases.sandbox.insert_jobs(
        [(job, "A", Decimal(job), "blue", "weld") for job in range(1, 51)]
    )


def test_reconcile_apply_succeeds_with_exactly_the_scripted_grants(
    databases: DatabasePair, grants: Grants
) -> None:
    """`reconcile --apply` as the scripted role converges the sandbox and touches nothing else."""
    _seed(databases)

    result = run_cli(["reconcile", "--apply"], grants.env(databases))

    assert result.returncode == 0, result.stderr
    assert databases.sandbox.fab_orders() == databases.production.fab_orders()
    assert databases.sandbox.fetchall("SELECT DISTINCT paint_color, stage FROM public.jobs") == [
        ("blue", "weld")
    ]


def test_check_passes_with_the_scripted_grants(databases: DatabasePair, grants: Grants) -> None:
    """`propagator check` (connections, tables, mapping) is satisfied by the scripted grants."""
    result = run_cli(["check"], grants.env(databases))

    assert result.returncode == 0, result.stdout + result.stderr


def test_role_cannot_write_outside_the_mapped_columns(
    databases: DatabasePair, grants: Grants
) -> None:
    """The sandbox role may update fab_order only: other columns, INSERT and DELETE are denied."""
    _seed(databases)
    with psycopg.connect(grants.sandbox_url, autocommit=True) as conn:
        conn.execute("UPDATE public.jobs SET fab_order = 1 WHERE job = 1")
        refused = [
            "UPDATE public.jobs SET paint_color = 'green' WHERE job = 1",
            "UPDATE public.jobs SET fab_order = 2, stage = 'paint' WHERE job = 1",
            "INSERT INTO public.jobs (job, release) VALUES (999, 'Z')",
            "DELETE FROM public.jobs WHERE job = 1",
            "TRUNCATE public.jobs",
        ]
        for statement in refused:
            with pytest.raises(pg_errors.InsufficientPrivilege, match="permission denied"):
                conn.execute(statement)
    assert databases.sandbox.fetchall(
        "SELECT paint_color, stage FROM public.jobs WHERE job = 1"
    ) == [("blue", "weld")]
    assert databases.sandbox.scalar("SELECT count(*) FROM public.jobs") == 50


def test_production_role_is_read_only_even_when_it_asks_otherwise(
    databases: DatabasePair, grants: Grants
) -> None:
    """Production sessions start read-only, and lifting that still leaves no right to write."""
    _seed(databases)
    with psycopg.connect(grants.production_url, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(pg_errors.ReadOnlySqlTransaction):
            conn.execute("UPDATE public.jobs SET fab_order = 0 WHERE job = 1")
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(pg_errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("UPDATE public.jobs SET fab_order = 0 WHERE job = 1")
        conn.execute("LISTEN propagator_jobs")
        held = conn.execute(
            "SELECT privilege FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', "
            "'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS privilege "
            "WHERE has_table_privilege('public.jobs', privilege)"
        ).fetchall()
    assert held == [("SELECT",)]
    refused = run_cli(["triggers", "install"], grants.env(databases))
    assert refused.returncode == 2, refused.stderr
    assert databases.production.scalar("SELECT count(*) FROM pg_catalog.pg_trigger") == 0
    assert databases.production.scalar("SELECT fab_order FROM public.jobs WHERE job = 1") == 10


def test_role_scripts_are_rerunnable_and_reset_grants_exactly(
    databases: DatabasePair, grants: Grants
) -> None:
    """Re-running the sandbox script with other columns leaves exactly those UPDATE grants."""
    script = SQL_DIR / "sandbox_roles.sql"
    psql(
        databases.sandbox.url,
        script,
        role=grants.role,
        password=PASSWORD,
        update_columns="fab_order, paint_color",
    )
    psql(
        databases.sandbox.url,
        script,
        role=grants.role,
        password=PASSWORD,
        update_columns="paint_color",
    )

    privileges = databases.sandbox.fetchall(
        "SELECT column_name FROM information_schema.column_privileges "
        "WHERE grantee = %s AND privilege_type = 'UPDATE' ORDER BY column_name",
        (grants.role,),
    )
    assert privileges == [("paint_color",)]
    table_privileges = databases.sandbox.fetchall(
        "SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = %s",
        (grants.role,),
    )
    assert table_privileges == [("SELECT",)]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _daemon_streams_one_update(
    databases: DatabasePair, env: dict[str, str], log_path: Path, *, converged: str
) -> str:
    """`propagator run` with ``env``: ready, converged (``converged`` says how), then one
    production update reaches the sandbox; stopped with SIGTERM. Its log, after exit 0."""
    port = free_port()
    log = log_path.open("w+", encoding="utf-8")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "propagator", "run"],
        env={**env, "PROPAGATOR_HTTP_PORT": str(port), "PROPAGATOR_RECONCILE_INTERVAL": "1h"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: _ready(port) or daemon.poll() is not None, timeout=60, what="/readyz")
        assert daemon.poll() is None, log_path.read_text()
        wait_until(
            lambda: databases.sandbox.fab_orders() == databases.production.fab_orders(),
            what=converged,
        )

        databases.production.execute("UPDATE public.jobs SET fab_order = 4242 WHERE job = 7")

        wait_until(
            lambda: (
                databases.sandbox.scalar("SELECT fab_order FROM public.jobs WHERE job = 7")
                == Decimal("4242.00")
            ),
            what="the change to reach the sandbox",
        )
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
        log.close()
    output = log_path.read_text()
    assert daemon.returncode == 0, output
    for refusal in ("permission denied", "read-only transaction", '"level": "error"'):
        assert refusal not in output, output
    return output


def test_daemon_propagates_with_exactly_the_scripted_grants(
    databases: DatabasePair, grants: Grants, tmp_path: Path
) -> None:
    """After a DBA installed the triggers, `propagator run` as the scripted role propagates."""
    _seed(databases)
    installed = run_cli(["triggers", "install"], databases.env())  # as the table owner (a DBA)
    assert installed.returncode == 0, installed.stderr
    checked = run_cli(["triggers", "status", "--check"], grants.env(databases))
    assert checked.returncode == 0, checked.stdout + checked.stderr  # the role may read it
    output = _daemon_streams_one_update(
        databases,
        grants.env(databases),
        tmp_path / "daemon.log",
        converged="catch-up as the least-privilege role",  # the catch-up reconcile on start
    )
    assert '"event": "batch_applied"' in output
    assert databases.sandbox.fetchall("SELECT DISTINCT paint_color, stage FROM public.jobs") == [
        ("blue", "weld")
    ]


def test_history_schema_grant_is_enough_for_setup_and_recording(
    databases: DatabasePair, grants: Grants
) -> None:
    """With the optional history grant, the role sets up its history tables and records writes."""
    psql(
        databases.sandbox.url,
        SQL_DIR / "sandbox_roles.sql",
        role=grants.role,
        password=PASSWORD,
        update_columns="fab_order",
        history_schema="propagator",
    )
    _seed(databases)
    env = grants.env(databases, PROPAGATOR_HISTORY_ENABLED="true")

    setup = run_cli(["setup"], env)
    applied = run_cli(["reconcile", "--apply"], env)

    assert setup.returncode == 0, setup.stderr
    assert applied.returncode == 0, applied.stderr
    assert databases.sandbox.fab_orders() == databases.production.fab_orders()
    assert databases.sandbox.scalar("SELECT count(*) FROM propagator.sync_history") == 50
    owners = databases.sandbox.fetchall(
        "SELECT DISTINCT tableowner FROM pg_catalog.pg_tables WHERE schemaname = 'propagator'"
    )
    assert owners == [(grants.role,)]


def _role_facts(database: Database, role: str) -> tuple[object, ...]:
    return database.fetchall(
        "SELECT r.rolreplication, r.rolsuper, "
        "  array(SELECT privilege_type::text FROM information_schema.role_table_grants "
        "        WHERE grantee = r.rolname ORDER BY 1) "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = %s",
        (role,),
    )[0]


def test_capture_logical_adds_replication_and_nothing_else_and_rerunning_takes_it_away(
    databases: DatabasePair, grants: Grants
) -> None:
    """`-v capture=logical` sets REPLICATION only; a run without it resets NOREPLICATION."""
    script = SQL_DIR / "production_roles.sql"
    url = databases.production.url

    psql(url, script, role=grants.role, password=PASSWORD, capture="logical")
    assert _role_facts(databases.production, grants.role) == (True, False, ["SELECT"])
    with psycopg.connect(grants.production_url, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)

    psql(url, script, role=grants.role, password=PASSWORD)
    assert _role_facts(databases.production, grants.role) == (False, False, ["SELECT"])

    command = [str(binary_dir() / "psql"), "-X", "-q", "-d", url, "-f", str(script)]
    for name, value in {"role": grants.role, "password": PASSWORD, "capture": "slot"}.items():
        command[1:1] = ["-v", f"{name}={value}"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0
    assert "capture must be notify or logical" in refused.stderr
    assert _role_facts(databases.production, grants.role) == (False, False, ["SELECT"])


def test_daemon_streams_logical_capture_with_exactly_the_scripted_grants(
    logical_databases: DatabasePair, logical_grants: Grants, tmp_path: Path
) -> None:
    """With REPLICATION from the script, the daemon's role creates its slot and streams it."""
    databases = logical_databases
    _seed(databases)
    slot = databases.production.name  # slot names are server-wide: one per test
    capture = {"PROPAGATOR_CAPTURE": "logical", "PROPAGATOR_LOGICAL_SLOT": slot}
    installed = run_cli(["capture", "install"], databases.env(**capture))  # the owner
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The slot goes: the daemon's role, in its read-only sessions, creates it again.
    databases.production.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
    output = _daemon_streams_one_update(
        databases,
        logical_grants.env(databases, **capture),
        tmp_path / "daemon.log",
        converged="the reconcile after the slot was created, as the least-privilege role",
    )
    assert '"event": "slot_created"' in output
    assert databases.production.scalar("SELECT count(*) FROM pg_catalog.pg_trigger") == 0
