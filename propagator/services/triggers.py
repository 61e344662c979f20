"""The production change triggers: install, uninstall and inspect them.

This is the entry point the CLI, the daemon and the seed use. The SQL itself is
rendered by ``trigger_sql`` (from ``sql/triggers/*.sql``, where a DBA can read
it), the names of the installed objects come from ``trigger_names``, and
``trigger_status`` reads back what is installed and reports any drift.

Triggers belong to a production table, not to a mapping: every function here
takes a ``WatchedTable`` (the table and every mapping reading it, whose columns
the one trigger set watches together) or one mapping's ``Settings`` (a table
read by that mapping alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from propagator.adapters.postgres import translate_error
from propagator.errors import TransientError
from propagator.services.trigger_columns import (
    Connection,
    incomparable_columns,
    with_filter_columns,
)
from propagator.services.trigger_names import TriggerNames, trigger_names
from propagator.services.trigger_spec import TriggerSpec, Watched, trigger_spec
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

__all__ = [
    "KEY_BYTES_PER_PAYLOAD",
    "RESYNC_PAYLOADS",
    "TRIGGER_VERSION",
    "Installation",
    "TriggerNames",
    "TriggerSpec",
    "TriggerStatus",
    "apply_installation",
    "install",
    "plan_installation",
    "render_install_sql",
    "render_uninstall_sql",
    "status",
    "trigger_names",
    "trigger_spec",
    "uninstall",
    "with_filter_columns",
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


@dataclass(frozen=True, slots=True)
class Installation:
    """A table's install statements, its columns already checked against the catalog."""

    spec: TriggerSpec
    statements: str


def plan_installation(conn: Connection, target: Watched) -> Installation:
    """Check the watched columns exist and find those without ``=``; install nothing yet.

    Installing on several tables checks them all first, so a wrong column in one
    leaves every table as it was.
    """
    spec = with_filter_columns(conn, trigger_spec(target))
    compare_as_jsonb = incomparable_columns(conn, spec)
    return Installation(spec, install_statements(spec, compare_as_jsonb))


def apply_installation(conn: Connection, installation: Installation) -> None:
    """Install or upgrade one table's triggers in one transaction."""
    _run(conn, installation.statements, f"installing triggers on {installation.spec.table}")


def install(conn: Connection, target: Watched) -> None:
    """Install or upgrade the triggers in one transaction; running it again changes nothing."""
    apply_installation(conn, plan_installation(conn, target))


def uninstall(conn: Connection, target: Watched) -> None:
    """Remove the triggers and function ``install`` created (and older versions' leftovers)."""
    spec = trigger_spec(target)
    _run(conn, uninstall_statements(spec), f"removing triggers from {spec.table}")
