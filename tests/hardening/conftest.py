"""The hardening tier: every test here carries the ``hardening`` marker; figures are printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.hardening)


@pytest.fixture
def measure(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> Callable[[str, float], float]:
    """Record a measured figure: printed even under capture, and kept as a test property."""

    def record(what: str, value: float, unit: str = "s") -> float:
        request.node.user_properties.append((what, value))
        with capsys.disabled():
            print(f"\n[measured] {request.node.name}: {what} = {value:.3f} {unit}")
        return value

    return record
