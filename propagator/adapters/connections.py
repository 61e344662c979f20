"""One way to open a connection from settings: which side, for what purpose.

Every synchronous connection propagator opens goes through ``open_connection``,
so timeouts, keepalives and the ``application_name`` a DBA sees in
``pg_stat_activity`` are set in one place.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from propagator.adapters.postgres import connect
from propagator.errors import Side
from propagator.settings import Settings

__all__ = ["Connection", "open_connection", "url_for"]

Connection = psycopg.Connection[tuple[Any, ...]]


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
) -> Connection:
    """Open a connection to ``side`` named ``propagator <purpose>`` in ``pg_stat_activity``.

    ``statement_timeout`` narrows the configured one (never widens it).
    """
    timeout = settings.statement_timeout
    if statement_timeout is not None:
        timeout = min(timeout, statement_timeout)
    return connect(
        url_for(settings, side),
        side,
        autocommit=autocommit,
        connect_timeout=settings.connect_timeout.total_seconds(),
        statement_timeout=timeout,
        application_name=f"propagator {purpose}"[:63],
    )
