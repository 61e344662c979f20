"""The demo's two throwaway servers, the settings that point at them and its own connections.

The sandbox server holds two databases: the sandbox (``app``, mapping ``jobs``)
and a QA copy of it (``app_qa``, mapping ``jobs_qa``), both mirroring
production's ``public.jobs``. With logical capture the production server runs
with ``wal_level = logical`` and a bounded ``max_slot_wal_keep_size``. The
settings come from arguments only: a user's environment may hold a real
deployment's variables, and the demo must never pick those up.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TextIO

import psycopg
from psycopg import sql
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from propagator.core.redact import register_secret
from propagator.demo.data import DEMO_DATABASE, QA_DATABASE
from propagator.demo.embedded import EmbeddedPostgres
from propagator.errors import ConfigurationError
from propagator.settings import Settings

__all__ = [
    "LOGICAL_SERVER_SETTINGS",
    "MAIN_MAPPING",
    "QA_MAPPING",
    "Connection",
    "DemoServers",
    "demo_mappings",
    "demo_settings",
    "log_file",
    "open_autocommit",
]

Connection = psycopg.Connection[tuple[Any, ...]]
MAIN_MAPPING = "jobs"  # production public.jobs -> the sandbox
QA_MAPPING = "jobs_qa"  # the same table -> the QA copy of the sandbox
Capture = Literal["notify", "logical"]
LOGICAL_SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_slot_wal_keep_size": "1GB",
    "synchronous_commit": "on",
}
"""Production for logical capture: a slot to stream and a bound on the WAL it may keep.

A slot streams only flushed WAL: without synchronous commits a change would wait
for the WAL writer (up to ``wal_writer_delay``), which the latencies would show.
"""


class DemoServers:
    """Production and sandbox: two separate throwaway servers, started side by side."""

    def __init__(self, capture: Capture = "notify") -> None:
        logical = LOGICAL_SERVER_SETTINGS if capture == "logical" else None
        self.production = EmbeddedPostgres("demo-production", settings=logical)
        self.sandbox = EmbeddedPostgres("demo-sandbox")
        self._starting: list[EmbeddedPostgres] = []

    @property
    def folders(self) -> tuple[Path, Path]:
        return self.production.root, self.sandbox.root

    def start(self) -> None:
        """Start both servers, create the demo database on each and the QA copy's."""
        self._starting = [self.production, self.sandbox]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="demo-server") as pool:
            for future in [pool.submit(server.start) for server in self._starting]:
                future.result()
        self._starting = []
        for server in (self.production, self.sandbox):
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
        with psycopg.connect(self.sandbox.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(QA_DATABASE)))

    def url(self, side: Literal["production", "sandbox", "qa"]) -> str:
        if side == "qa":
            return self.sandbox.url(QA_DATABASE)
        server = self.production if side == "production" else self.sandbox
        return server.url(DEMO_DATABASE)

    def close(self) -> None:
        """Stop both servers and delete their folders, even after an interrupted start.

        A start cut short may leave a postmaster that writes its pid file a moment
        later; wait for it briefly so it can be stopped too, never left behind.
        """
        for server in (self.production, self.sandbox):
            if server in self._starting and (server.data / "PG_VERSION").exists():
                deadline = time.monotonic() + 3.0
                pid_file = server.data / "postmaster.pid"
                while not pid_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            server.cleanup()
        self._starting = []


class _DemoSettings(Settings):
    """Settings from arguments only: the demo must not pick up a real deployment's variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(
    production_url: str, sandbox_url: str, *, api_token: str, capture: Capture = "notify"
) -> Settings:
    """The seed's mapping (``public.jobs`` by ``(job, release)``, ``fab_order``), demo servers.

    ``capture`` is how production changes reach the daemon: triggers or the slot.
    """
    register_secret(api_token)
    return _DemoSettings(
        production_database_url=SecretStr(production_url),
        sandbox_database_url=SecretStr(sandbox_url),
        http_host="127.0.0.1",
        http_port=0,
        api_token=SecretStr(api_token),
        log_format="json",
        log_level="info",
        capture=capture,
    )


def demo_mappings(settings: Settings, qa_url: str) -> tuple[Settings, Settings]:
    """The two mappings of the demo's settings: ``jobs`` (the sandbox) and ``jobs_qa``.

    Same production table, column and key; the QA copy differs only by its sandbox URL.
    """
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    qa = _DemoSettings(**{**values, "sandbox_database_url": SecretStr(qa_url)})
    return settings.named(MAIN_MAPPING), qa.named(QA_MAPPING)


def open_autocommit(url: str, application_name: str) -> Connection:
    """A plain autocommit connection for the demo's own reads and writes."""
    try:
        return psycopg.connect(url, autocommit=True, application_name=application_name)
    except psycopg.Error as error:
        raise ConfigurationError(f"cannot connect to the demo server: {error}") from None


def log_file(folder: Path) -> TextIO:
    """The daemon's JSON log lines go to a file, so the terminal shows only the demo."""
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / "daemon.log").open("a", encoding="utf-8")
