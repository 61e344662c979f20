"""The daemon's HTTP server: probes, metrics, status, history and the reconcile action."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from propagator.errors import ConfigurationError
from propagator.observability.http import HttpServer
from propagator.observability.logging import get_logger
from propagator.observability.metrics import Metrics
from propagator.observability.pages import ReconcileAction, add_web_routes
from propagator.services.history import HistoryReader, HistoryReaders
from propagator.settings import Settings

__all__ = ["listens_beyond_loopback", "start_http"]

_log = get_logger(__name__)


def listens_beyond_loopback(host: str) -> bool:
    """Whether an ``http_host`` is reachable from other machines (names count as reachable)."""
    if host.strip().lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


async def start_http(
    settings: Settings,
    metrics: Metrics,
    *,
    status: Callable[[], dict[str, Any]],
    readiness: Callable[[], tuple[bool, list[str]]],
    liveness: Callable[[], bool],
    history: HistoryReader | HistoryReaders | None,
    reconcile: ReconcileAction,
) -> HttpServer:
    """A started server on ``http_host:http_port``; a port in use is a configuration error."""
    server = HttpServer(
        settings.http_host,
        settings.http_port,
        metrics,
        status,
        readiness,
        liveness,
        max_connections=settings.http_max_connections,
        max_connections_per_client=settings.http_max_client_connections,
        allowed_hosts=settings.http_allowed_hosts,
    )
    token, read_token = settings.api_token, settings.read_token
    add_web_routes(
        server,
        status=status,
        history=history,
        reconcile=reconcile,
        api_token=token.get_secret_value() if token else None,
        read_protection=settings.http_read_protection,
        read_token=read_token.get_secret_value() if read_token else None,
    )
    try:
        await server.start()
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve HTTP on {settings.http_host}:{settings.http_port}: "
            f"{error.strerror or error}"
        ) from None
    if listens_beyond_loopback(settings.http_host) and not settings.http_read_protection:
        _log.warning(
            "http_reads_unprotected",
            host=settings.http_host,
            hint="set PROPAGATOR_HTTP_READ_PROTECTION=true and PROPAGATOR_READ_TOKEN",
        )
    return server
