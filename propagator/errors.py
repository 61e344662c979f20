"""The errors propagator reports, and the exit code each one means.

Transient versus permanent is a type, not a string match: the daemon retries a
``TransientError`` quickly with backoff, and a ``PermanentError`` slowly, with a
clear report, without spinning.
"""

from __future__ import annotations

import enum
from typing import Literal

from propagator.core.redact import redact

__all__ = [
    "ActionRefusedError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "ExitCode",
    "LockTimeoutError",
    "NonUniqueKeyError",
    "PermanentError",
    "PropagatorError",
    "Refusal",
    "SchemaError",
    "SettingsMismatchError",
    "Side",
    "TransientError",
]

Side = Literal["production", "sandbox"]


class ExitCode:
    """Documented process exit codes of every subcommand."""

    OK = 0
    DIFFERENCES_FOUND = 1
    USAGE = 2
    DATABASE_UNAVAILABLE = 3
    ROWS_FAILED = 4
    INTERRUPTED = 130


class PropagatorError(Exception):
    """Base of every error propagator reports to a user; its text is always redacted."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigurationError(PropagatorError):
    """A setting is missing or wrong; nothing was contacted or written."""


class PermanentError(PropagatorError):
    """Retrying soon will not help: a dropped column, a refused permission."""


class SchemaError(PermanentError):
    """A table or a mapped/key column is missing or unusable on one side."""


class SettingsMismatchError(ConfigurationError, PermanentError):
    """The settings do not fit the databases: keys that are not unique, a filter that fails.

    A command refuses with exit 2; the daemon reports it and retries slowly, as any
    permanent error (someone may fix the table or the settings meanwhile).
    """


class NonUniqueKeyError(SettingsMismatchError):
    """The key columns do not identify one row on a side, so the row to write is ambiguous."""


class TransientError(PropagatorError):
    """A failure that retrying with backoff is expected to cure."""

    exit_code = ExitCode.DATABASE_UNAVAILABLE


class LockTimeoutError(TransientError):
    """A lock someone else holds was not granted within ``lock_timeout``: try again later."""


class DatabaseUnavailableError(TransientError):
    """A database could not be reached or dropped the connection.

    ``side`` says which one, so a retry is labelled by type, never by reading the message.
    """

    def __init__(self, message: str, side: Side | None = None) -> None:
        super().__init__(message)
        self.side: Side | None = side


class Refusal(enum.Enum):
    """Why the daemon will not do an on-demand action now; the HTTP layer picks the code."""

    STOPPING = "stopping"
    NOT_LEADER = "not_leader"
    DID_NOT_FINISH = "did_not_finish"


class ActionRefusedError(PropagatorError):
    """The daemon cannot do the action now (a standby, stopping, or the work failed)."""

    def __init__(self, message: str, reason: Refusal) -> None:
        super().__init__(message)
        self.reason = reason
