"""The daemon's HTTP server: probes, metrics, status, history and the reconcile action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from propagator.errors import ConfigurationError
from propagator.observability.http import HttpServer
from propagator.observability.metrics import Metrics
from propagator.observability.pages import ReconcileAction, add_web_routes
from propagator.services.history import HistoryReader
from propagator.settings import Settings

__all__ = ["start_http"]


async def start_http(
    settings: Settings,
    metrics: Metrics,
    *,
    status: Callable[[], dict[str, Any]],
    readiness: Callable[[], tuple[bool, list[str]]],
    liveness: Callable[[], bool],
    history: HistoryReader | None,
    reconcile: ReconcileAction,
) -> HttpServer:
    """A started server on ``http_host:http_port``; a port in use is a configuration error."""
    server = HttpServer(
        settings.http_host, settings.http_port, metrics, status, readiness, liveness
    )
    token = settings.api_token
    add_web_routes(
        server,
        status=status,
        history=history,
        reconcile=reconcile,
        api_token=token.get_secret_value() if token else None,
    )
    try:
        await server.start()
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve HTTP on {settings.http_host}:{settings.http_port}: "
            f"{error.strerror or error}"
        ) from None
    return server
