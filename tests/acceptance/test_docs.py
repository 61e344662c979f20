"""The documentation cannot rot: its code blocks run, and its references are complete.

Fenced blocks are sorted by their info string:

* ``bash``: run with bash (``set -euo pipefail``) against the test servers, with
  ``PRODUCTION_DATABASE_URL``/``SANDBOX_DATABASE_URL`` set and ``propagator`` on PATH;
* ``python``: executed in order, one namespace per document, with the same variables
  set in ``os.environ``;
* ``toml`` / ``dotenv``: must load as valid settings;
* ``sh``, ``console``, ``text``: illustrations, not run (the Quickstart ``sh`` block is
  checked against ``.ci/run`` instead).

A block with another info string, or none, fails the test: every block is either run or
explicitly an illustration.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from propagator.cli import build_parser
from propagator.demo.data import build_demo_data, load_demo_data
from propagator.observability.http import HttpServer
from propagator.observability.metrics import Metrics
from propagator.observability.pages import add_web_routes
from propagator.settings import Settings, env_name, load_settings
from tests.acceptance.docs_support import ROOT, section, shown_default
from tests.helpers import DatabasePair, run_cli

DOCUMENTS = ("README.md", "docs/DATABASE_MAPPING.md")
RUN = {"bash", "python"}
VALIDATE = {"toml", "dotenv"}
ILLUSTRATE = {"sh", "console", "text"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line} ({self.language or 'no info string'})"


def blocks(document: str) -> list[Block]:
    text = (ROOT / document).read_text(encoding="utf-8")
    return [
        Block(document, text.count("\n", 0, match.start()) + 1, match.group(1).strip(), match[2])
        for match in FENCE.finditer(text)
    ]


@pytest.fixture
def demo_databases(databases: DatabasePair) -> DatabasePair:
    """The test pair filled with the demo's seed-shaped tables."""
    load_demo_data(databases.production.url, databases.sandbox.url, build_demo_data())
    return databases


def test_every_block_is_run_or_marked_as_an_illustration() -> None:
    """Each fenced block has an info string that says whether the docs test runs it."""
    known = RUN | VALIDATE | ILLUSTRATE
    unknown = [str(b) for d in DOCUMENTS for b in blocks(d) if b.language not in known]
    assert unknown == [], f"blocks without a known info string: {unknown}"
    assert any(b.language == "python" for b in blocks("docs/DATABASE_MAPPING.md"))
    assert any(b.language == "bash" for b in blocks("README.md"))


def test_quickstart_is_two_lines_and_ci_runs_the_second_verbatim() -> None:
    """The Quickstart has exactly two command lines; `.ci/run` runs the test line as written."""
    text = section("README.md", "Quickstart")
    fenced = [b for b in blocks("README.md") if f"```{b.language}\n{b.code}```" in text]
    assert len(fenced) == 1, "the Quickstart holds one code block"
    lines = [line for line in fenced[0].code.splitlines() if line.strip()]
    assert len(lines) == 2
    demo, tests = lines
    assert demo.startswith("python3 -m venv .venv && ")
    assert demo.endswith(" && .venv/bin/propagator demo")
    assert tests == (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
        "&& .venv/bin/python -m pytest"
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, ".ci/run must run the README's test line verbatim"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_settings_blocks_are_valid(document: str, tmp_path: Path) -> None:
    """Every toml and dotenv block loads as settings without an error."""
    checked = 0
    for block in blocks(document):
        if block.language == "toml":
            path = tmp_path / "settings.toml"
            path.write_text(block.code, encoding="utf-8")
            assert load_settings(path), block
        elif block.language == "dotenv":
            values = dict(
                line.split("=", 1)
                for line in block.code.splitlines()
                if line.strip() and not line.startswith("#")
            )
            with pytest.MonkeyPatch.context() as patch:
                for key in os.environ:
                    if key.startswith("PROPAGATOR_") or key.endswith("_DATABASE_URL"):
                        patch.delenv(key)
                for key, value in values.items():
                    patch.setenv(key, value)
                assert load_settings(), block
        else:
            continue
        checked += 1
    assert checked, f"{document} has no settings examples"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_runnable_blocks_run_against_real_servers(
    document: str,
    demo_databases: DatabasePair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every bash and python block of the document runs, in order, without an error."""
    env = demo_databases.env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in [k for k in os.environ if k.startswith("PROPAGATOR_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PRODUCTION_DATABASE_URL", demo_databases.production.url)
    monkeypatch.setenv("SANDBOX_DATABASE_URL", demo_databases.sandbox.url)
    namespace: dict[str, object] = {"__name__": "docs"}
    ran = 0
    try:
        for block in blocks(document):
            if block.language == "bash":
                result = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", block.code],
                    env=env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=240,
                    check=False,
                )
                assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
                assert "Traceback" not in result.stderr, f"{block}:\n{result.stderr}"
            elif block.language == "python":
                output = io.StringIO()
                code = compile(block.code, f"{block.document}:{block.line}", "exec")
                with redirect_stdout(output):
                    exec(code, namespace)  # noqa: S102 - the documentation's own examples
            else:
                continue
            ran += 1
    finally:
        for value in namespace.values():
            dispose = getattr(value, "dispose", None)
            if callable(dispose) and type(value).__name__ == "Engine":
                dispose()
    assert ran, f"{document} has no runnable blocks"
    # Examples that log a failure instead of raising must not have logged one.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


def test_report_excerpts_are_what_the_dry_run_prints(demo_databases: DatabasePair) -> None:
    """The report excerpts in both documents are what `reconcile --dry-run` really prints."""
    result = run_cli(["reconcile", "--dry-run", "--limit", "2"], demo_databases.env())
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.language == "text" and "MAPPING SUMMARY" in block.code:
                shown = [line for line in block.code.splitlines() if line.strip()]
                missing = [line for line in shown if line not in printed]
                assert missing == [], f"{block} shows lines the report does not print: {missing}"


def test_readme_lists_every_setting() -> None:
    """The configuration reference names every Settings field: environment name and TOML key."""
    reference = section("README.md", "Configuration reference")
    rows = {line.split("|")[1].strip(" `"): line for line in reference.splitlines() if "|" in line}
    for field in Settings.model_fields:
        assert env_name(field) in rows, f"README lacks {env_name(field)}"
        assert f"`{field}`" in rows[env_name(field)], f"README lacks the TOML key {field}"


def test_readme_states_every_default() -> None:
    """The Default column matches each scalar default of Settings (numbers, text, durations)."""
    reference = section("README.md", "Configuration reference")
    cells = {
        line.split("|")[1].strip(" `"): line.split("|")[3].strip()
        for line in reference.splitlines()
        if line.startswith("| `")
    }
    checked = 0
    for name, field in Settings.model_fields.items():
        shown = shown_default(field.default)
        if shown is None:
            continue
        assert cells[env_name(name)] == f"`{shown}`", f"README default of {name}"
        checked += 1
    assert checked >= 25


def test_readme_lists_every_metric() -> None:
    """The metrics reference names every series the daemon exports."""
    reference = section("README.md", "Metrics reference")
    names = []
    for family in Metrics(CollectorRegistry()).registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.append(family.name + suffix)
    assert len(names) >= 20
    missing = [name for name in names if f"`{name}`" not in reference]
    assert missing == [], f"README lacks metrics: {missing}"


def _commands(parser: argparse.ArgumentParser, prefix: str = "propagator") -> Iterator[tuple]:
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")
            return
    options = [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config", "--version")
    ]
    yield prefix, options


def test_readme_lists_every_command_and_option() -> None:
    """The CLI reference names every subcommand and every one of its options."""
    reference = section("README.md", "CLI reference")
    parser = build_parser()
    commands = list(_commands(parser))
    assert len(commands) >= 10
    for command, options in commands:
        rows = [line for line in reference.splitlines() if f"| `{command}` |" in line]
        assert rows, f"README lacks {command}"
        for option in options:
            assert f"`{option}" in rows[0], f"README lacks {command} {option}"
    assert "`--config FILE`" in reference


def test_readme_lists_every_exit_code_and_endpoint() -> None:
    """Exit codes 0 1 2 3 4 130 and every HTTP route are documented."""
    codes = section("README.md", "CLI reference")
    for code in (0, 1, 2, 3, 4, 130):
        assert re.search(rf"^\| {code} \| ", codes, re.MULTILINE), f"README lacks exit code {code}"
    endpoints = section("README.md", "HTTP endpoints")
    server = HttpServer(
        "127.0.0.1", 0, Metrics(CollectorRegistry()), dict, lambda: (True, []), bool
    )
    add_web_routes(server, status=dict, history=None, reconcile=None, api_token=None)
    for path, methods in server.routes().items():
        method = "POST" if "POST" in methods else "GET"
        assert f"| `{method} {path}` |" in endpoints, f"README lacks {method} {path}"


def test_readme_links_resolve() -> None:
    """Relative links in both documents point at files that exist."""
    for document in DOCUMENTS:
        text = (ROOT / document).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (ROOT / document).parent.joinpath(target).resolve().exists(), (
                f"{document} links to a missing {target}"
            )
