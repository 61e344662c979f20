"""Helpers for tests that run the daemon against two real servers: settings, data, proofs.

The daemon itself runs through ``propagator.testing.DaemonRunner``, as in the
demo and the benchmarks; ``ObservedDaemon`` adds the view from outside (its
HTTP endpoint, scraped like Prometheus would).
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from propagator.core.report import ReconcileReport
from propagator.services.capture import install as install_capture
from propagator.services.capture_plan import logical_targets
from propagator.services.reconcile import reconcile
from propagator.services.sync import SyncSession
from propagator.services.triggers import install
from propagator.settings import Settings, load_settings
from propagator.settings.mappings import watched_tables
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair

__all__ = [
    "FAST",
    "QUICK",
    "ObservedDaemon",
    "Scrape",
    "caught_up_daemon",
    "converged",
    "daemon_settings",
    "differences",
    "install_logical",
    "install_triggers",
    "observed_settings",
    "running_daemon",
    "sample",
    "seed",
]

FAST = {
    "http_port": 0,
    "reconcile_interval": "0",
    "heartbeat_interval": "500ms",
    "heartbeat_timeout": "3s",
    "retry_initial": "50ms",
    "retry_max": "1s",
    "standby_poll_interval": "200ms",
    "permanent_retry_interval": "2s",
    "shutdown_timeout": "15s",
    "connect_timeout": "3s",
}

#: ``FAST`` with the default ``permanent_retry_interval``: the observability tests' settings.
QUICK = {key: value for key, value in FAST.items() if key != "permanent_retry_interval"}


def daemon_settings(databases: DatabasePair, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "production_database_url": databases.production.url,
        "sandbox_database_url": databases.sandbox.url,
        **FAST,
        **overrides,
    }
    return load_settings(**values)


def install_triggers(databases: DatabasePair, settings: Settings) -> None:
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install(conn, settings)


def install_logical(databases: DatabasePair, settings: Settings) -> None:
    """The publication and slot ``propagator capture install`` creates for ``settings``."""
    (target,) = logical_targets(watched_tables([settings]))
    with psycopg.connect(databases.production.url, autocommit=True) as conn:
        install_capture(conn, target)


def seed(databases: DatabasePair, count: int, *, sandbox_value: Any = 0) -> None:
    """``count`` jobs on both sides: production fab_order = job, sandbox ``sandbox_value``."""
    databases.production.insert_jobs((i, "A", i) for i in range(1, count + 1))
    databases.sandbox.insert_jobs((i, "A", sandbox_value) for i in range(1, count + 1))


def converged(databases: DatabasePair) -> bool:
    return databases.production.fab_orders() == databases.sandbox.fab_orders()


def differences(settings: Settings) -> int:
    """What a separate dry-run reconcile finds (the proof a test trusts)."""
    with SyncSession(settings, application_name="test check") as session:
        context = session.prepare()
        report = ReconcileReport(True, "production", "sandbox", context.spec.target_columns)
        reconcile(context, lambda side: session.connect(side), report, apply=False)
    return report.differences


# The daemon seen from outside, through its HTTP endpoint.

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def observed_settings(databases: DatabasePair, **overrides: Any) -> Settings:
    return load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        **{**QUICK, **overrides},
    )


class ObservedDaemon(DaemonRunner):
    """A daemon in a thread of its own, reached only through its HTTP endpoint."""

    @property
    def port(self) -> int:
        assert self.daemon.http is not None
        return self.daemon.http.port

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def scrape(self) -> Scrape:
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


def sample(scrape: Scrape, name: str, **labels: str) -> float:
    """The sum over the series carrying ``labels`` (whatever their mapping label)."""
    wanted = set(labels.items())
    return sum(
        value
        for (found, found_labels), value in scrape.items()
        if found == name and wanted <= set(found_labels)
    )


@contextmanager
def running_daemon(settings: Settings) -> Iterator[ObservedDaemon]:
    """A started daemon whose HTTP endpoint is bound; stopped (and drained) afterwards."""
    with ObservedDaemon(settings, thread_name="observed-daemon").start(timeout=30) as daemon:
        daemon.wait_for(lambda d: d.http is not None, timeout=10, what="the HTTP endpoint")
        yield daemon


@contextmanager
def caught_up_daemon(databases: DatabasePair, rows: int = 200) -> Iterator[DaemonRunner]:
    """Triggers installed, ``rows`` matching rows, and a caught-up daemon on quick settings."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, rows, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with DaemonRunner(settings) as runner:
        runner.wait_caught_up()
        yield runner
