"""The production change triggers: install, uninstall and inspect them.

This is the entry point the CLI, the daemon and the seed use. The SQL itself is
rendered by ``trigger_sql`` (from ``sql/triggers/*.sql``, where a DBA can read
it), the names of the installed objects come from ``trigger_names``, and
``trigger_status`` reads back what is installed and reports any drift.
"""

from __future__ import annotations

import psycopg

from propagator.adapters.postgres import translate_error
from propagator.errors import TransientError
from propagator.services.trigger_columns import Connection, incomparable_columns
from propagator.services.trigger_names import TriggerNames, trigger_names
from propagator.services.trigger_sql import (
    KEY_BYTES_PER_PAYLOAD,
    RESYNC_PAYLOADS,
    TRIGGER_VERSION,
    install_statements,
    render_install_sql,
    render_uninstall_sql,
    uninstall_statements,
)
from propagator.services.trigger_status import TriggerStatus, status
from propagator.settings import Settings

__all__ = [
    "KEY_BYTES_PER_PAYLOAD",
    "RESYNC_PAYLOADS",
    "TRIGGER_VERSION",
    "TriggerNames",
    "TriggerStatus",
    "install",
    "render_install_sql",
    "render_uninstall_sql",
    "status",
    "trigger_names",
    "uninstall",
]


def _run(conn: Connection, statements: str, what: str) -> None:
    """Run a whole script in one transaction; a held table lock is worth retrying, not a bug."""
    try:
        with conn.transaction():
            conn.execute(statements.encode("utf-8"))
    except psycopg.errors.LockNotAvailable:
        raise TransientError(
            f"could not lock the production table {what} within 5 s "
            "(a long transaction holds it); try again"
        ) from None
    except psycopg.Error as error:
        raise translate_error(error, "production", what) from None


def install(conn: Connection, settings: Settings) -> None:
    """Install or upgrade the triggers in one transaction; running it again changes nothing."""
    compare_as_jsonb = incomparable_columns(conn, settings)
    _run(
        conn,
        install_statements(settings, compare_as_jsonb),
        f"installing triggers on {settings.production_table}",
    )


def uninstall(conn: Connection, settings: Settings) -> None:
    """Remove the triggers and function ``install`` created (and older versions' leftovers)."""
    _run(
        conn,
        uninstall_statements(settings),
        f"removing triggers from {settings.production_table}",
    )
