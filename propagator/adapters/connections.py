"""Opening connections and translating what the driver raises.

Every synchronous connection propagator opens goes through ``open_connection``
(or ``connect``, for a URL that is not in the settings), so timeouts,
keepalives and the ``application_name`` a DBA sees in ``pg_stat_activity`` are
set in one place. ``translate_error`` is the adapter boundary: psycopg errors
leave the adapters as transient or permanent ``PropagatorError`` types.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from propagator.core.redact import mask_url, redact
from propagator.errors import (
    DatabaseUnavailableError,
    LockTimeoutError,
    PermanentError,
    PropagatorError,
    SchemaError,
    Side,
    TransientError,
)
from propagator.settings import Settings

__all__ = ["Connection", "connect", "open_connection", "translate_error", "url_for"]

Connection = psycopg.Connection[tuple[Any, ...]]

_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator, system
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired, or NOWAIT
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available


def translate_error(error: BaseException, side: Side, what: str) -> PropagatorError:
    """Map a psycopg error onto transient/permanent at the adapter boundary."""
    if isinstance(error, PropagatorError):
        return error
    detail = redact(str(error).strip().splitlines()[0] if str(error).strip() else repr(error))
    sqlstate = getattr(error, "sqlstate", None) or ""
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and not sqlstate:
        return DatabaseUnavailableError(f"{side} database unavailable while {what}: {detail}", side)
    if sqlstate == _LOCK_NOT_AVAILABLE:
        return LockTimeoutError(f"{side} lock not available while {what}: {detail}")
    if sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES) or sqlstate in _TRANSIENT_SQLSTATES:
        return TransientError(f"{side} database error while {what}: {detail}")
    if isinstance(error, pg_errors.UndefinedColumn | pg_errors.UndefinedTable):
        return SchemaError(f"{side} schema changed while {what}: {detail}")
    return PermanentError(f"{side} database refused {what}: {detail}")


def connect(
    url: str,
    side: Side,
    *,
    autocommit: bool = False,
    connect_timeout: float = 10.0,
    statement_timeout: timedelta | None = None,
    application_name: str = "propagator",
) -> Connection:
    """Open one connection, or raise ``DatabaseUnavailableError`` naming the side and host."""
    options: dict[str, Any] = {
        "connect_timeout": max(1, math.ceil(connect_timeout)),
        "application_name": application_name,
        "autocommit": autocommit,
        # A peer that vanished (no FIN, no RST) must not hang a writer for hours:
        # keepalives notice a silent peer while waiting for an answer, and
        # tcp_user_timeout gives up on data the peer never acknowledges.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }
    if statement_timeout is not None and statement_timeout > timedelta(0):
        milliseconds = int(statement_timeout.total_seconds() * 1000)
        options["options"] = f"-c statement_timeout={milliseconds}"
    try:
        return psycopg.connect(url, **options)
    except psycopg.Error as error:
        reason = redact(str(error).strip().splitlines()[-1] if str(error).strip() else "")
        raise DatabaseUnavailableError(
            f"cannot connect to the {side} database at {mask_url(url)}: {reason}", side
        ) from None


def url_for(settings: Settings, side: Side) -> str:
    """The database URL of one side."""
    return settings.production_url() if side == "production" else settings.sandbox_url()


def open_connection(
    settings: Settings,
    side: Side,
    purpose: str,
    *,
    autocommit: bool = False,
    statement_timeout: timedelta | None = None,
    application_name: str | None = None,
) -> Connection:
    """Open a connection to ``side`` named ``propagator <purpose>`` in ``pg_stat_activity``.

    An empty ``purpose`` names it plain ``propagator``; ``application_name``
    replaces the whole name, for a program that embeds propagator and names its
    own sessions. ``statement_timeout`` narrows the configured one (never widens it).
    """
    timeout = settings.statement_timeout
    if statement_timeout is not None:
        timeout = min(timeout, statement_timeout)
    if application_name is None:
        application_name = f"propagator {purpose}".rstrip()[:63]
    return connect(
        url_for(settings, side),
        side,
        autocommit=autocommit,
        connect_timeout=settings.connect_timeout.total_seconds(),
        statement_timeout=timeout,
        application_name=application_name,
    )
