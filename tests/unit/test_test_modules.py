"""Test modules share helpers through helper modules and fixtures, never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _package_of(path: Path) -> str:
    """The dotted package a file under tests/ belongs to (``tests.integration``)."""
    return ".".join(path.parent.relative_to(TESTS.parent).parts)


def _imported_modules(source: str, package: str) -> list[str]:
    """Every module an import statement names, relative imports resolved against ``package``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            # ``from tests.integration import test_daemon`` names the module in the alias.
            found += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return found


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and parts[-1].startswith("test_")


def test_no_test_module_imports_another_test_module() -> None:
    """No tests/**/test_*.py imports a test module: shared helpers live in helper modules."""
    offences = [
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in sorted(TESTS.rglob("test_*.py"))
        for name in _imported_modules(path.read_text(encoding="utf-8"), _package_of(path))
        if _is_test_module(name)
    ]
    assert offences == []


@pytest.mark.parametrize(
    ("statement", "module"),
    [
        ("from tests.integration.test_daemon import seed", "tests.integration.test_daemon"),
        ("import tests.integration.test_http", "tests.integration.test_http"),
        ("from tests.integration import test_checksum", "tests.integration.test_checksum"),
        ("from .test_triggers import Listener", "tests.unit.test_triggers"),
        ("from ..integration.test_daemon import seed", "tests.integration.test_daemon"),
    ],
)
def test_the_check_sees_every_form_of_import(statement: str, module: str) -> None:
    """Absolute, relative and ``from package import test_x`` imports of a test module count."""
    imported = _imported_modules(statement, "tests.unit")
    assert module in [name for name in imported if _is_test_module(name)]


def test_helper_modules_may_be_imported() -> None:
    """Helper modules (support, helpers, conftest) are what test modules share instead."""
    source = (
        "from tests.helpers import wait_until\n"
        "from tests.integration.support import seed\n"
        "from tests.hardening.support import pair_env\n"
        "from tests.conftest import Server\n"
    )
    assert not [name for name in _imported_modules(source, "tests.unit") if _is_test_module(name)]
