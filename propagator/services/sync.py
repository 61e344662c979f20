"""Syncing in one import: a session on both databases and the paths that write the sandbox.

``SyncSession`` holds one command's (or the daemon's) connections and checked
context. The paths that write are gathered here from ``services.converge``
(``converge_keys``, the one path every writer goes through) and
``services.context`` (``SyncContext``). The reconcile is ``services.reconcile``:
not imported here, so commands that do not compare tables never load it.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Literal

from propagator.adapters.connections import open_connection
from propagator.core.redact import mask_url
from propagator.services.context import (
    AppliedHook,
    Connection,
    ProgressCallback,
    Source,
    SyncContext,
)
from propagator.services.converge import BatchResult, converge_differences, converge_keys
from propagator.settings import Settings

__all__ = [
    "AppliedHook",
    "BatchResult",
    "Connection",
    "ProgressCallback",
    "Source",
    "SyncContext",
    "SyncSession",
    "converge_differences",
    "converge_keys",
]


class SyncSession:
    """Connections to both databases and the checked context, for one command or daemon.

    Connections are named ``propagator <purpose>`` (plain ``propagator`` without
    one); ``application_name`` replaces the whole name, for a program that
    embeds propagator and names its own sessions.
    """

    def __init__(
        self, settings: Settings, *, purpose: str = "", application_name: str | None = None
    ) -> None:
        self.settings = settings
        self.purpose = purpose
        self.application_name = application_name
        self._stack = ExitStack()
        self.production: Connection | None = None
        self.sandbox: Connection | None = None
        self.context: SyncContext | None = None

    def connect(self, side: Literal["production", "sandbox"], **options: Any) -> Connection:
        """A new connection to ``side``, closed with the session (``autocommit`` may be given)."""
        conn = open_connection(
            self.settings,
            side,
            self.purpose,
            application_name=self.application_name,
            **options,
        )
        self._stack.callback(conn.close)
        return conn

    def open_production(self) -> Connection:
        self.production = self.connect("production")
        return self.production

    def open_sandbox(self) -> Connection:
        self.sandbox = self.connect("sandbox")
        return self.sandbox

    def prepare(self) -> SyncContext:
        production = self.production or self.open_production()
        sandbox = self.sandbox or self.open_sandbox()
        self.context = SyncContext.from_settings(self.settings, production, sandbox)
        return self.context

    def describe_production(self) -> str:
        return f"{self.settings.production_table_name} @ {mask_url(self.settings.production_url())}"

    def describe_sandbox(self) -> str:
        return f"{self.settings.sandbox_table_name} @ {mask_url(self.settings.sandbox_url())}"

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
