"""The error types: their exit codes, their kind, and their always-redacted text."""

from __future__ import annotations

import pytest

from propagator.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    ExitCode,
    PermanentError,
    PropagatorError,
    SchemaError,
    TransientError,
)


def test_documented_exit_codes() -> None:
    """Exit codes are the documented ones: 0, 1, 2, 3, 4 and 130."""
    assert (
        ExitCode.OK,
        ExitCode.DIFFERENCES_FOUND,
        ExitCode.USAGE,
        ExitCode.DATABASE_UNAVAILABLE,
        ExitCode.ROWS_FAILED,
        ExitCode.INTERRUPTED,
    ) == (0, 1, 2, 3, 4, 130)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError, ExitCode.USAGE),
        (PermanentError, ExitCode.USAGE),
        (SchemaError, ExitCode.USAGE),
        (TransientError, ExitCode.DATABASE_UNAVAILABLE),
        (DatabaseUnavailableError, ExitCode.DATABASE_UNAVAILABLE),
    ],
)
def test_each_error_carries_its_exit_code(error: type[PropagatorError], code: int) -> None:
    """A configuration or schema problem exits 2; an unreachable database exits 3."""
    assert error("x").exit_code == code


def test_transient_and_permanent_are_types() -> None:
    """Retry decisions follow the type: schema problems are permanent, outages transient."""
    assert issubclass(SchemaError, PermanentError)
    assert issubclass(DatabaseUnavailableError, TransientError)
    assert not issubclass(PermanentError, TransientError)
    assert not issubclass(TransientError, PermanentError)
    for error in (ConfigurationError, PermanentError, TransientError):
        assert issubclass(error, PropagatorError)


def test_error_text_is_redacted() -> None:
    """A password in an error message never reaches the user."""
    error = DatabaseUnavailableError("cannot reach postgresql://app:Top-Secret@db:5432/jobs")
    assert str(error) == "cannot reach postgresql://app:***@db:5432/jobs"
    assert error.message == str(error)
