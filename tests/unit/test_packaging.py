"""The installer ships every subpackage, and the core stays free of drivers and adapters."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
CONTRACT = "The mapping core is pure: no database drivers, no I/O adapters"


def _declared_packages() -> set[str]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return set(config["tool"]["setuptools"]["packages"])


def _package_directories() -> set[str]:
    """Every directory under propagator/ that Python would import as a package."""
    found = set()
    for init in (ROOT / "propagator").rglob("__init__.py"):
        relative = init.parent.relative_to(ROOT)
        if "__pycache__" in relative.parts:
            continue
        found.add(".".join(relative.parts))
    return found


def _lint_imports() -> str:
    script = Path(sysconfig.get_path("scripts")) / "lint-imports"
    found = str(script) if script.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed; it comes with the dev extra (import-linter)")
    return found


def _run_lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_lint_imports(), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_declared_packages_equal_the_package_tree() -> None:
    """The explicit packages list is exactly the package directories plus propagator.sql."""
    assert _declared_packages() == _package_directories() | {"propagator.sql"}


def test_sql_package_directory_exists() -> None:
    """The propagator.sql package maps to the top-level sql/ directory that holds the SQL files."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    directory = ROOT / config["tool"]["setuptools"]["package-dir"]["propagator.sql"]
    assert (directory / "__init__.py").is_file()


def test_core_purity_contract_is_kept() -> None:
    """import-linter reports the core-purity contract as kept for the real tree."""
    result = _run_lint_imports(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{CONTRACT} KEPT" in output


@pytest.mark.parametrize(
    ("violation", "forbidden"),
    [
        ("import psycopg\n", "psycopg"),
        ("from propagator import settings\n", "propagator.settings"),
    ],
)
def test_core_purity_contract_catches_a_violation(
    tmp_path: Path, violation: str, forbidden: str
) -> None:
    """A copy of the tree whose core imports a driver or an outer layer breaks the contract."""
    shutil.copytree(
        ROOT / "propagator", tmp_path / "propagator", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    values = tmp_path / "propagator" / "core" / "values.py"
    values.write_text(values.read_text(encoding="utf-8") + violation, encoding="utf-8")
    result = _run_lint_imports(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"propagator.core is not allowed to import {forbidden}" in output


@pytest.mark.parametrize(
    ("module", "violation", "broken"),
    [
        (
            "adapters/reads.py",
            "import propagator.daemon\n",
            "propagator.adapters is not allowed to import propagator.daemon",
        ),
        (
            "services/converge.py",
            "import propagator.observability.http\n",
            "propagator.services is not allowed to import propagator.observability",
        ),
        (
            "daemon/requests.py",
            "import propagator.daemon.pipeline\n",
            "No cycles are allowed in propagator.daemon",
        ),
    ],
)
def test_layer_and_cycle_contracts_catch_a_violation(
    tmp_path: Path, module: str, violation: str, broken: str
) -> None:
    """An import upwards, between independent parts, or closing a cycle breaks a contract."""
    shutil.copytree(
        ROOT / "propagator", tmp_path / "propagator", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    target = tmp_path / "propagator" / module
    target.write_text(target.read_text(encoding="utf-8") + violation, encoding="utf-8")
    result = _run_lint_imports(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert broken in output


def test_installed_version_is_the_package_version() -> None:
    """pyproject.toml takes its version from propagator.__version__: the two never drift."""
    from importlib.metadata import version

    import propagator

    assert version("propagator") == propagator.__version__
