"""Secrets never leak: every output of every command, log line and HTTP body is searched.

The test servers trust every connection, so any password is accepted; each URL
carries a distinctive one (the sandbox's with URL-encoded special characters).
A password in an environment variable is fine; in argv, output or logs it is not.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from propagator.demo.embedded import free_port
from propagator.errors import ConfigurationError
from propagator.settings import load_settings
from tests.hardening.support import daemon_process, pair_env, seed_equal
from tests.helpers import DatabasePair, run_cli, wait_until

pytestmark = pytest.mark.slow  # runs every command and the daemon end to end

PRODUCTION_PASSWORD = "Zq7ProdSeCrEt"
SANDBOX_PASSWORD_ENCODED = "s%40nd%3Abox%2FZq9"
SANDBOX_PASSWORD = "s@nd:box/Zq9"
API_TOKEN = "tok-Zq9-never-shown"
SECRETS = (PRODUCTION_PASSWORD, SANDBOX_PASSWORD, SANDBOX_PASSWORD_ENCODED, API_TOKEN)


def with_password(url: str, password: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def leaks(outputs: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: {secret}" for where, text in outputs for secret in SECRETS if secret in text]


def test_no_command_output_log_or_http_body_shows_a_password(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """reconcile, check, triggers, status and the daemon (logs, HTTP, argv, errors): no secret."""
    seed_equal(databases, 20)
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job <= 5")
    production = with_password(databases.production.url, PRODUCTION_PASSWORD)
    sandbox = with_password(databases.sandbox.url, SANDBOX_PASSWORD_ENCODED)
    env = pair_env(
        databases, production_url=production, sandbox_url=sandbox, PROPAGATOR_API_TOKEN=API_TOKEN
    )
    outputs: list[tuple[str, str]] = []

    def cli(*args: str, expect: int = 0, environment: dict[str, str] = env) -> None:
        result = run_cli(list(args), environment)
        outputs.append((" ".join(args), result.stdout + result.stderr))
        assert result.returncode == expect, result.stdout + result.stderr
        assert "Traceback" not in result.stderr

    cli("check", "--show-settings")
    cli("reconcile", "--check", expect=1)
    cli("reconcile", "--format", "json", "--check", expect=1)
    cli("reconcile", "--apply")
    cli("triggers", "sql")
    cli("triggers", "install")
    cli("triggers", "status")
    cli("triggers", "status", "--format", "json")

    # Unreachable databases: the error names the URL, password masked.
    closed = f"postgresql://postgres:{PRODUCTION_PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    unreachable = {**env, "PRODUCTION_DATABASE_URL": closed}
    cli("check", expect=3, environment=unreachable)
    cli("reconcile", expect=3, environment=unreachable)
    cli("triggers", "status", expect=3, environment=unreachable)

    with daemon_process(env, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        databases.production.execute("UPDATE jobs SET fab_order = 77 WHERE job = 7")
        wait_until(
            lambda: databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 7") == 77,
            what="a change through the daemon",
        )
        # An exception path: the mapped column vanishes, the daemon logs and retries.
        databases.sandbox.execute("ALTER TABLE jobs RENAME COLUMN fab_order TO moved")
        databases.production.execute("UPDATE jobs SET fab_order = 78 WHERE job = 7")
        wait_until(
            lambda: '"cause": "permanent"' in daemon.log(), what="the permanent error logged"
        )
        for path in ("/status", "/metrics", "/healthz", "/readyz", "/", "/history?limit=50"):
            answer = daemon.get(path)
            assert answer is not None, path
            outputs.append((f"GET {path}", answer[1].decode("utf-8", "replace")))
        databases.sandbox.execute("ALTER TABLE jobs RENAME COLUMN moved TO fab_order")
        cli("status", "--url", f"http://127.0.0.1:{daemon.port}")
        cli("status", "--url", f"http://127.0.0.1:{daemon.port}", "--format", "json")
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        outputs.append(("/proc/<pid>/cmdline", cmdline.decode()))
        ps = subprocess.run(
            ["ps", "-o", "args=", "-p", str(daemon.pid)], capture_output=True, text=True
        )
        outputs.append(("ps -o args", ps.stdout + ps.stderr))
        environ = Path(f"/proc/{daemon.pid}/environ").read_bytes()
        assert PRODUCTION_PASSWORD.encode() in environ  # it is there, and only there
    outputs.append(("daemon log (running)", daemon.log()))

    # A daemon whose sandbox cannot be reached keeps retrying and says why, masked.
    sandbox_closed = f"postgresql://postgres:{SANDBOX_PASSWORD_ENCODED}@127.0.0.1:{free_port()}/x"
    with daemon_process(
        {**env, "SANDBOX_DATABASE_URL": sandbox_closed}, tmp_path / "unreachable.log"
    ) as daemon:
        wait_until(lambda: "sandbox_unavailable" in daemon.log(), what="retries logged")
        deadline = time.monotonic() + 10
        while daemon.get("/status") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        for path in ("/status", "/readyz", "/metrics"):
            answer = daemon.get(path)
            assert answer is not None, path
            outputs.append((f"GET {path} (sandbox unreachable)", answer[1].decode()))
    outputs.append(("daemon log (sandbox unreachable)", daemon.log()))
    assert "127.0.0.1" in daemon.log()  # the error does name where it tried

    assert leaks(outputs) == []
    assert any("***" in text for _, text in outputs)  # masked, not merely absent


def test_settings_repr_and_description_never_show_a_password(databases: DatabasePair) -> None:
    """Settings printed, described or put in an exception keep every secret hidden."""
    settings = load_settings(
        production_database_url=with_password(databases.production.url, PRODUCTION_PASSWORD),
        sandbox_database_url=with_password(databases.sandbox.url, SANDBOX_PASSWORD_ENCODED),
        api_token=API_TOKEN,
    )
    shown = [
        ("repr", repr(settings)),
        ("str", str(settings)),
        ("describe", str(settings.describe())),
        ("error", str(ConfigurationError(f"cannot use {settings.production_url()}"))),
    ]
    assert leaks(shown) == []
