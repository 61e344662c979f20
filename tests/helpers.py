"""Test helpers: waiting with a deadline, sample tables, and running the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import pytest

from propagator.sql import load_sql

T = TypeVar("T")

JOBS_DDL = load_sql("sample/jobs.sql")


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


@dataclass
class Database:
    """One throwaway database on one server, with a few conveniences."""

    url: str
    name: str

    def connect(self, **options: Any) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self.url, autocommit=True, **options)

    def execute(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        with self.connect() as conn:
            conn.execute(query, params)  # type: ignore[arg-type]

    def fetchall(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.fetchall(query, params)
        return rows[0][0] if rows else None

    def insert_jobs(self, rows: Iterable[tuple[Any, ...]], table: str = "public.jobs") -> None:
        """Insert ``(job, release, fab_order[, paint_color, stage])`` rows with COPY."""
        rows = list(rows)
        if not rows:
            return
        columns = ["job", "release", "fab_order", "paint_color", "stage"][: len(rows[0])]
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with (
            self.connect() as conn,
            conn.cursor() as cursor,
            cursor.copy(statement) as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def fab_orders(self, table: str = "public.jobs") -> dict[tuple[int, str], Any]:
        return {
            (job, release): value
            for job, release, value in self.fetchall(f"SELECT job, release, fab_order FROM {table}")
        }


@dataclass
class DatabasePair:
    production: Database
    sandbox: Database

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for running the CLI against this pair."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
        env.update(
            PRODUCTION_DATABASE_URL=self.production.url,
            SANDBOX_DATABASE_URL=self.sandbox.url,
            PROPAGATOR_LOG_FORMAT="json",
        )
        env.update(extra)
        return env


INTERNAL_ERROR = 70  # propagator's exit code for a bug, never for something a user caused


def refuse_internal_error(code: int | None, output: str, *, allowed: bool = False) -> None:
    """Fail the test when a ``propagator`` process exited 70, unless the test provokes a bug."""
    if code == INTERNAL_ERROR and not allowed:
        tail = output[-2000:]
        raise AssertionError(f"propagator exited {INTERNAL_ERROR} (internal error): {tail}")


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 120,
    input: str | None = None,
    allow_internal_error: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m propagator`` as a user would, capturing its output.

    An exit 70 (internal error) fails the test unless ``allow_internal_error``.
    """
    result = subprocess.run(
        [sys.executable, "-m", "propagator", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    refuse_internal_error(result.returncode, result.stderr, allowed=allow_internal_error)
    return result


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without any propagator setting, plus ``extra``: only what a test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    env.pop("PRODUCTION_DATABASE_URL", None)
    env.pop("SANDBOX_DATABASE_URL", None)
    env.update(extra)
    return env


ORDERS_MAPPING: dict[str, Any] = {
    "name": "orders",
    "production_table": "public.orders",
    "sandbox_table": "public.orders",
    "key_columns": ["id"],
    "field_mappings": ["status"],
}
"""The second table most tests of named mappings use: orders(id, status, ...)."""


def mappings_toml(mappings: Iterable[Mapping[str, Any]], **top_level: Any) -> str:
    """A settings file: ``top_level`` keys, then one [[mappings]] table per mapping.

    Values are written as JSON, which is valid TOML for strings, numbers, booleans
    and lists of them.
    """
    lines = [f"{key} = {json.dumps(value)}" for key, value in top_level.items()]
    for mapping in mappings:
        lines += ["", "[[mappings]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in mapping.items()]
    return "\n".join(lines) + "\n"


class FakeClock:
    """A monotonic clock the test moves by hand (the debounce buffer's tests)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def assert_promtool_accepts(exposition: bytes) -> None:
    """``promtool check metrics`` finds nothing to say about a /metrics body (skip without it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package 'prometheus')")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    problems = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, problems
    assert problems.strip() == "", problems


def forget_settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every setting the machine's environment could pass in (PROPAGATOR_*, *_DATABASE_URL,
    in any case: settings names are case-insensitive)."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("PROPAGATOR_") or upper.endswith("_DATABASE_URL"):
            monkeypatch.delenv(name)
