"""The command line as a user meets it: help, exit codes, one-line errors, no secrets."""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from urllib.parse import urlsplit, urlunsplit

import pytest

from propagator.cli import build_parser
from propagator.demo.embedded import free_port
from tests.helpers import DatabasePair, run_cli

SECRET = "Pa55-never%2Fshown"  # percent-encoded in the URL; the server sees "Pa55-never/shown"
SECRET_FORMS = (SECRET, "Pa55-never/shown")


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any propagator setting, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPAGATOR_")
        and key not in ("PRODUCTION_DATABASE_URL", "SANDBOX_DATABASE_URL")
    }
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI and assert what holds for every run: no traceback anywhere."""
    result = run_cli(args, env)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout
    return result


def with_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'postgres'}:{SECRET}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def unreachable_url() -> str:
    return f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/jobs"


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...]
) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                path = (*prefix, name)
                yield path
                yield from _command_paths(subparser, path)


COMMANDS = list(_command_paths(build_parser(), ()))


def test_the_core_commands_are_registered() -> None:
    """reconcile and check are among the registered subcommands."""
    assert {("reconcile",), ("check",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "propagator")
def test_help_for_every_command(command: tuple[str, ...]) -> None:
    """Every command and subcommand prints its help and exits 0, without any setting."""
    result = cli([*command, "--help"], base_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(('propagator', *command))}")
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args", [[], ["no-such-command"], ["reconcile", "--no-such-option"], ["reconcile", "--limit"]]
)
def test_usage_error_exits_2(args: list[str]) -> None:
    """A usage error prints usage and one error line, and exits 2."""
    result = cli(args, base_env())
    assert result.returncode == 2
    assert result.stderr.startswith("usage: propagator")
    assert result.stderr.strip().splitlines()[-1].startswith("propagator")
    assert "error:" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROPAGATOR_BATCH_SIZE", "lots"),
        ("PROPAGATOR_CONNECT_TIMEOUT", "soon"),
        ("PROPAGATOR_FIELD_MAPPINGS", "fab_order:no_such_transform"),
        ("PROPAGATOR_RECONCILE_METHOD", "guess"),
        ("SANDBOX_DATABASE_URL", "mysql://u@localhost/db"),
    ],
)
def test_bad_setting_names_the_variable(variable: str, value: str) -> None:
    """A wrong setting gives one line naming its environment variable, and exit 2."""
    env = base_env(
        PRODUCTION_DATABASE_URL=unreachable_url(), SANDBOX_DATABASE_URL=unreachable_url()
    )
    env[variable] = value
    result = cli(["reconcile"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"propagator: error: invalid setting {variable}: ")
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["reconcile"], ["check"]])
def test_missing_production_url_is_one_clear_line(command: list[str]) -> None:
    """Without PRODUCTION_DATABASE_URL the command says so in one line and exits 2."""
    result = cli(command, base_env(SANDBOX_DATABASE_URL=unreachable_url()))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "propagator: error: PRODUCTION_DATABASE_URL is not set (a postgresql:// URL is required)"
    ]


@pytest.mark.parametrize("command", [["reconcile"], ["reconcile", "--format", "json"], ["check"]])
def test_unreachable_database_exits_3(command: list[str]) -> None:
    """An unreachable database exits 3 with one line naming it, password masked."""
    result = cli(command, base_env(PRODUCTION_DATABASE_URL=unreachable_url()))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("propagator: error: cannot connect to the production database at")
    assert "app:***@127.0.0.1" in lines[0]
    for secret in SECRET_FORMS:
        assert secret not in result.stdout + result.stderr


def test_password_is_never_printed(databases: DatabasePair) -> None:
    """A password in the URLs (ignored by a trust server) never reaches stdout or stderr."""
    databases.production.insert_jobs([(1, "A", 510), (2, "B", 7)])
    databases.sandbox.insert_jobs([(1, "A", 500)])
    env = databases.env(
        PRODUCTION_DATABASE_URL=with_password(databases.production.url),
        SANDBOX_DATABASE_URL=with_password(databases.sandbox.url),
    )
    runs = [
        cli(["check", "--show-settings"], env),
        cli(["reconcile"], env),
        cli(["reconcile", "--format", "json"], env),
        cli(["reconcile", "--apply"], env),
        cli(["reconcile"], {**env, "PROPAGATOR_FIELD_MAPPINGS": "no_such_column"}),
        cli(["reconcile"], {**env, "SANDBOX_DATABASE_URL": unreachable_url()}),
        cli(["reconcile"], {**env, "PROPAGATOR_BATCH_SIZE": "0"}),
    ]
    assert [run.returncode for run in runs] == [0, 0, 0, 0, 2, 3, 2]
    assert "***" in runs[0].stdout  # the settings are shown, masked
    for run in runs:
        for secret in SECRET_FORMS:
            assert secret not in run.stdout
            assert secret not in run.stderr


def test_module_version() -> None:
    """``python -m propagator --version`` prints the installed version."""
    result = cli(["--version"], base_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"propagator {version('propagator')}"
