"""Rows a sandbox user held: reported as busy (not failed), and the lock timeout setting."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from psycopg import errors as pg_errors

from propagator.adapters.connections import translate_error
from propagator.core.report import ReconcileReport, render_json, render_text
from propagator.errors import ConfigurationError, LockTimeoutError, TransientError
from propagator.settings import load_settings


def applied_report(*, updated: int, busy: int) -> ReconcileReport:
    report = ReconcileReport(False, "production", "sandbox", ("fab_order",))
    report.statistics.updated = updated
    report.statistics.busy = busy
    return report


def test_busy_rows_are_reported_apart_and_the_run_is_still_ok() -> None:
    report = applied_report(updated=99, busy=1)
    assert report.ok
    text = render_text(report)
    assert "Applied 99 updates" in text
    assert "1 rows busy (held by another sandbox session), not applied: retry later" in text
    assert json.loads(render_json(report))["statistics"]["busy"] == 1


def test_without_busy_rows_the_verdict_is_unchanged() -> None:
    text = render_text(applied_report(updated=3, busy=0))
    assert "busy" not in text


def test_a_lock_timeout_is_transient() -> None:
    """Retried like any transient error wherever it is not turned into a deferral."""
    assert issubclass(LockTimeoutError, TransientError)


def test_sandbox_lock_timeout_defaults_to_two_seconds_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().sandbox_lock_timeout == timedelta(seconds=2)
    monkeypatch.setenv("PROPAGATOR_SANDBOX_LOCK_TIMEOUT", "250ms")
    assert load_settings().sandbox_lock_timeout == timedelta(milliseconds=250)
    monkeypatch.setenv("PROPAGATOR_SANDBOX_LOCK_TIMEOUT", "0")
    with pytest.raises(ConfigurationError):
        load_settings()


def test_lock_not_available_translates_to_a_lock_timeout() -> None:
    error = translate_error(pg_errors.LockNotAvailable("canceling statement"), "sandbox", "x")
    assert isinstance(error, LockTimeoutError)
    assert "sandbox lock not available while x" in str(error)
