"""The package stays readable in one sitting: small modules, classes and functions.

Measured with ``ast`` (a definition's lines run from its ``def``/``class`` line to
its last line, decorators and docstring included); CONTRIBUTING.md names this
test as the measure. Declarative tables may run longer and are listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "propagator"
MODULE_LINES = 400
CLASS_LINES = 300
FUNCTION_LINES = 60
# Declarative tables: a list of declarations, nothing to follow but the list.
DECLARATIVE: set[str] = set()


def _definitions() -> list[tuple[str, str, int]]:
    found: list[tuple[str, str, int]] = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        found.append(("module", relative, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append((kind, f"{relative}:{node.lineno} {node.name}", length))
    return found


def test_modules_classes_and_functions_stay_small() -> None:
    """No module over 400 lines, no class over 300, no function over 60 (tables excepted)."""
    limits = {"module": MODULE_LINES, "class": CLASS_LINES, "function": FUNCTION_LINES}
    too_long = [
        f"{kind} {where}: {length} lines (limit {limits[kind]})"
        for kind, where, length in _definitions()
        if length > limits[kind] and where.split(" ")[-1] not in DECLARATIVE
    ]
    assert not too_long, "\n".join(too_long)
