"""Both databases asked at once, errors reported as if they had been asked in turn."""

from __future__ import annotations

import threading

import pytest

from propagator.errors import DatabaseUnavailableError
from propagator.services.both_sides import on_both


def test_both_calls_wait_together() -> None:
    """Production's call can wait for the sandbox's: they run at the same time."""
    sandbox_started = threading.Event()

    def production() -> str:
        assert sandbox_started.wait(timeout=10), "the sandbox call did not run meanwhile"
        return "p"

    def sandbox() -> int:
        sandbox_started.set()
        return 7

    assert on_both(production, sandbox) == ("p", 7)


def test_production_refusal_comes_first_and_the_sandbox_call_still_finishes() -> None:
    finished = threading.Event()

    def production() -> None:
        raise DatabaseUnavailableError("production down", "production")

    def sandbox() -> None:
        finished.wait(timeout=0.05)
        finished.set()
        raise DatabaseUnavailableError("sandbox down", "sandbox")

    with pytest.raises(DatabaseUnavailableError, match="production down"):
        on_both(production, sandbox)
    assert finished.is_set()  # nothing left running behind the error


def test_a_sandbox_refusal_is_raised_when_production_succeeds() -> None:
    def sandbox() -> None:
        raise DatabaseUnavailableError("sandbox down", "sandbox")

    with pytest.raises(DatabaseUnavailableError, match="sandbox down"):
        on_both(lambda: 1, sandbox)
