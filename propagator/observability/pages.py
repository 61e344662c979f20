"""The daemon's people-facing routes: the status page, ``GET /history``, ``POST /reconcile``.

Added to ``HttpServer``'s route table from outside, so the server stays a small
generic one. The page (``statuspage``) is rendered on the server, readable
without JavaScript, with every dynamic value HTML-escaped, and one hashed
script refreshes it from ``/status`` and ``/history`` every two seconds: no
build step, no CDN, nothing fetched from anywhere but the daemon itself.

Action endpoints (``POST /reconcile``) need ``Authorization: Bearer <api_token>``
(``bearer_protected``: 403 while no token is configured, 401 for a missing or
wrong one, compared in constant time). With read protection on, the page,
``/status`` and ``/history`` need the read token (or the API token) too, as a
bearer token or as the password a browser prompts for. No token ever appears in
a page or a log line: the page asks for the action token and sends it only in
that header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from propagator.errors import ActionRefusedError, ConfigurationError, PropagatorError, Refusal
from propagator.observability.auth import bearer_protected, read_protected
from propagator.observability.http import HttpServer, Request, Response
from propagator.observability.logging import get_logger, redact_data
from propagator.observability.statuspage import PAGE_CHANGES, PAGE_HEADERS, render_status_page

__all__ = [
    "HISTORY_PARAMS",
    "MAPPING_PARAM",
    "READ_ROUTES",
    "HistoryReader",
    "ReconcileAction",
    "add_web_routes",
    "render_status_page",
]

_log = get_logger(__name__)

HistoryReader = Callable[[Mapping[str, str | None]], Awaitable[dict[str, Any]]]
"""Query parameters -> a ``HistoryPage.as_dict()``; bad input raises ``ConfigurationError``.

``mapping`` arrives as one comma-separated text (repeated parameters joined);
the reader checks the names against the configured mappings.
"""
ReconcileAction = Callable[..., Awaitable[dict[str, Any]]]
"""Run a full reconcile now and return its summary; ``mapping=NAME`` (keyword) names one
mapping (an unknown name raises ``ConfigurationError``), without it every mapping."""

HISTORY_PARAMS: Final = ("key", "field", "source", "since", "until", "limit", "before")
MAPPING_PARAM: Final = "mapping"
MAX_PARAM_CHARS: Final = 1000
"""A history parameter longer than this is a 400 before any parsing."""
READ_ROUTES: Final = ("/", "/status", "/history")
"""What read protection guards; probes and metrics stay open."""

# The HTTP answer to each reason the daemon gives for refusing an action.
_REFUSAL_STATUS: Final = {
    Refusal.NOT_LEADER: 409,
    Refusal.STOPPING: 503,
    Refusal.DID_NOT_FINISH: 503,
}


def _history_params(request: Request) -> dict[str, str | None]:
    """The history filters of a request; an overlong one is a ``ConfigurationError``.

    ``mapping`` may be repeated or comma separated: all of them, joined by commas.
    """
    params = {name: request.query_value(name) for name in HISTORY_PARAMS}
    mappings = request.query.get(MAPPING_PARAM) or []
    params[MAPPING_PARAM] = ",".join(mappings) if mappings else None
    for name, value in params.items():
        if value is not None and len(value) > MAX_PARAM_CHARS:
            raise ConfigurationError(f"{name} is longer than {MAX_PARAM_CHARS} characters")
    return params


def _history_route(history: HistoryReader | None) -> Callable[[Request], Awaitable[Response]]:
    """The ``GET /history`` handler reading through ``history`` (None: disabled, 404)."""

    async def history_endpoint(request: Request) -> Response:
        """``GET /history?key=&field=&source=&since=&until=&limit=&before=&mapping=``.

        ``mapping`` (repeatable, or comma separated) names the mappings to show;
        without it every mapping this daemon serves, which must then share one
        sandbox. An unknown name, or mappings of several sandboxes, is a 400.
        """
        if history is None:
            return Response.error(404, "history is disabled")
        try:
            page = await history(_history_params(request))
        except ConfigurationError as error:
            return Response.error(400, str(error))
        except PropagatorError as error:
            return Response.error(503, str(error))
        return Response.json(redact_data(page))

    return history_endpoint


def add_web_routes(
    server: HttpServer,
    *,
    status: Callable[[], dict[str, Any]],
    history: HistoryReader | None,
    reconcile: ReconcileAction | None,
    api_token: str | None,
    read_protection: bool = False,
    read_token: str | None = None,
) -> None:
    """Serve ``/``, ``GET /history`` and ``POST /reconcile`` on ``server``.

    ``history`` None: history is disabled (404); ``reconcile`` None: this process
    cannot reconcile (503). ``read_protection``: the page, ``/status`` and
    ``/history`` need ``read_token`` or ``api_token``.
    """

    async def reconcile_endpoint(request: Request) -> Response:
        if reconcile is None:
            return Response.error(503, "this process cannot reconcile")
        mapping = request.query_value("mapping")
        _log.info("manual_reconcile_requested", peer=request.peer, mapping=mapping)
        try:
            summary = await (reconcile() if mapping is None else reconcile(mapping=mapping))
        except ConfigurationError as error:
            return Response.error(400, str(error))
        except ActionRefusedError as error:
            return Response.error(_REFUSAL_STATUS[error.reason], str(error))
        except PropagatorError as error:
            return Response.error(503, str(error))
        return Response.json(redact_data(summary))

    async def page_endpoint(_request: Request) -> Response:
        changes: list[dict[str, Any]] = []
        if history is not None:
            try:
                recent = {"limit": str(PAGE_CHANGES), "mapping": "*"}  # every mapping's
                changes = (await history(recent))["entries"]
            except PropagatorError as error:
                _log.warning("status_page_history_unavailable", error=str(error))
        page = render_status_page(
            redact_data(status()),
            redact_data(changes),
            history_enabled=history is not None,
            can_reconcile=bool(api_token) and reconcile is not None,
        )
        return Response(200, page.encode(), "text/html; charset=utf-8", PAGE_HEADERS)

    server.add_route("GET", "/", page_endpoint)
    server.add_route("GET", "/history", _history_route(history))
    server.add_route("POST", "/reconcile", bearer_protected(lambda: api_token, reconcile_endpoint))
    if read_protection:
        _protect_reads(server, read_token, api_token)


def _protect_reads(server: HttpServer, *tokens: str | None) -> None:
    """Guard the read routes: each needs one of ``tokens`` (none configured: 403)."""
    accepted = tuple(token for token in tokens if token)
    for path in READ_ROUTES:
        server.guard(path, lambda handler: read_protected(lambda: accepted, handler))
