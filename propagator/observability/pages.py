"""The daemon's people-facing routes: the status page, ``GET /history``, ``POST /reconcile``.

Added to ``HttpServer``'s route table from outside, so the server stays a small
generic one. The page is rendered on the server (readable without JavaScript),
with every dynamic value HTML-escaped, and a few lines of inline script refresh
it from ``/status`` and ``/history`` every two seconds: no build step, no CDN,
nothing fetched from anywhere but the daemon itself.

Action endpoints (``POST /reconcile``) need ``Authorization: Bearer <api_token>``
(``bearer_protected``: 403 while no token is configured, 401 for a missing or
wrong one, compared in constant time). The token never appears in a page or a
log line: the page asks for it and sends it only in that header.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final

from propagator.errors import ActionRefusedError, ConfigurationError, PropagatorError, Refusal
from propagator.observability.http import HttpServer, Request, Response, bearer_protected
from propagator.observability.logging import get_logger, redact_data

__all__ = [
    "HistoryReader",
    "ReconcileAction",
    "add_web_routes",
    "render_status_page",
]

_log = get_logger(__name__)

HistoryReader = Callable[[Mapping[str, str | None]], Awaitable[dict[str, Any]]]
"""Query parameters -> a ``HistoryPage.as_dict()``; bad input raises ``ConfigurationError``."""
ReconcileAction = Callable[[], Awaitable[dict[str, Any]]]
"""Run a full reconcile now and return its summary."""

_HISTORY_PARAMS: Final = ("key", "field", "source", "since", "until", "limit", "before")
_PAGE_CHANGES: Final = 20
_PAGE_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


# The HTTP answer to each reason the daemon gives for refusing an action.
_REFUSAL_STATUS: Final = {
    Refusal.NOT_LEADER: 409,
    Refusal.STOPPING: 503,
    Refusal.DID_NOT_FINISH: 503,
}


def add_web_routes(
    server: HttpServer,
    *,
    status: Callable[[], dict[str, Any]],
    history: HistoryReader | None,
    reconcile: ReconcileAction | None,
    api_token: str | None,
) -> None:
    """Serve ``/``, ``GET /history`` and ``POST /reconcile`` on ``server``.

    ``history`` None means history is disabled (``/history`` answers 404);
    ``reconcile`` None means this process cannot reconcile (503).
    """

    async def history_endpoint(request: Request) -> Response:
        if history is None:
            return Response.error(404, "history is disabled")
        params = {name: request.query_value(name) for name in _HISTORY_PARAMS}
        try:
            page = await history(params)
        except ConfigurationError as error:
            return Response.error(400, str(error))
        except PropagatorError as error:
            return Response.error(503, str(error))
        return Response.json(redact_data(page))

    async def reconcile_endpoint(request: Request) -> Response:
        if reconcile is None:
            return Response.error(503, "this process cannot reconcile")
        _log.info("manual_reconcile_requested", peer=request.peer)
        try:
            summary = await reconcile()
        except ActionRefusedError as error:
            return Response.error(_REFUSAL_STATUS[error.reason], str(error))
        except PropagatorError as error:
            return Response.error(503, str(error))
        return Response.json(redact_data(summary))

    async def page_endpoint(_request: Request) -> Response:
        changes: list[dict[str, Any]] = []
        if history is not None:
            try:
                changes = (await history({"limit": str(_PAGE_CHANGES)}))["entries"]
            except PropagatorError as error:
                _log.warning("status_page_history_unavailable", error=str(error))
        page = render_status_page(
            redact_data(status()),
            redact_data(changes),
            history_enabled=history is not None,
            can_reconcile=bool(api_token) and reconcile is not None,
        )
        return Response(200, page.encode(), "text/html; charset=utf-8", _PAGE_HEADERS)

    server.add_route("GET", "/", page_endpoint)
    server.add_route("GET", "/history", history_endpoint)
    server.add_route("POST", "/reconcile", bearer_protected(lambda: api_token, reconcile_endpoint))


# Formatting shared in spirit with the inline script below (same rules, same words).


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _clock(value: Any) -> str:
    if not isinstance(value, str):
        return "—"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return value


def _reconcile_summary(last: Any) -> str:
    if not isinstance(last, dict):
        return "none yet"
    return (
        f"{last.get('source', '?')} at {_clock(last.get('finished_at'))}: "
        f"{last.get('differences', 0)} differences, {last.get('updated', 0)} updated, "
        f"{last.get('failed', 0)} failed in {_seconds(last.get('duration_seconds'))}"
    )


def _connections(status: Mapping[str, Any]) -> str:
    connections = status.get("connections")
    if not isinstance(connections, dict) or not connections:
        return "—"
    return ", ".join(
        f"{name.replace('_', ' ')} {'up' if up else 'DOWN'}" for name, up in connections.items()
    )


def _change_row(entry: Mapping[str, Any]) -> str:
    cells = (
        _clock(entry.get("applied_at")),
        entry.get("key_label", ""),
        entry.get("field", ""),
        f"{entry.get('old_json', 'null')} → {entry.get('new_json', 'null')}",
        entry.get("source", ""),
        _seconds(entry.get("lag_seconds")),
    )
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def render_status_page(
    status: Mapping[str, Any],
    changes: list[dict[str, Any]],
    *,
    history_enabled: bool,
    can_reconcile: bool,
) -> str:
    """The whole page as one string; every dynamic value passes through ``html.escape``."""

    def e(value: Any) -> str:
        return html.escape(str(value))

    pending = f"{status.get('pending_keys', 0)} (+{status.get('in_flight_keys', 0)} in flight)"
    rows = "".join(_change_row(entry) for entry in changes) or (
        '<tr><td colspan="6">no changes recorded yet</td></tr>'
        if history_enabled
        else '<tr><td colspan="6">history is disabled</td></tr>'
    )
    action = (
        '<form id="reconcile-form"><label>API token '
        '<input id="token" type="password" autocomplete="off" required></label>'
        '<button id="reconcile" type="submit">Reconcile now</button>'
        '<output id="reconcile-result"></output></form>'
        if can_reconcile
        else ""
    )
    return _PAGE.format(
        instance=e(status.get("instance_id", "")),
        version=e(status.get("version", "")),
        role=e(status.get("role", "unknown")),
        connections=e(_connections(status)),
        lag=e(_seconds(status.get("last_lag_seconds"))),
        pending=e(pending),
        last_reconcile=e(_reconcile_summary(status.get("last_reconcile"))),
        last_error=e(status.get("last_error") or "none"),
        rows=rows,
        action=action,
        history_enabled="true" if history_enabled else "false",
        limit=_PAGE_CHANGES,
    )


_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>propagator · {role}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 0; padding: 1rem; color: #1d2330;
       background: #f6f7f9; }}
h1 {{ font-size: 1.2rem; margin: 0 0 .75rem; }}
h1 small {{ color: #687080; font-weight: normal; }}
dl {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(13rem, 1fr)); gap: .5rem;
      margin: 0 0 1rem; }}
dl div {{ background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: .5rem .75rem; }}
dt {{ color: #687080; font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }}
dd {{ margin: 0; font-size: 1.05rem; overflow-wrap: anywhere; }}
#role[data-role="leader"] {{ color: #0a7a3b; font-weight: 600; }}
#role[data-role="standby"] {{ color: #8a5a00; font-weight: 600; }}
table {{ width: 100%; border-collapse: collapse; background: #fff; font-size: .9rem; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e6e9ee; }}
.scroll {{ overflow-x: auto; }}
form {{ display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: 1rem 0; }}
input, button {{ font: inherit; padding: .35rem .6rem; }}
#stale {{ color: #b00020; }}
@media (max-width: 600px) {{
  body {{ padding: .5rem; }}
  dl {{ grid-template-columns: repeat(2, minmax(0, 1fr)); }}
  table {{ font-size: .8rem; }}
  th, td {{ padding: .3rem .25rem; }}
}}
</style>
</head>
<body>
<h1>propagator <small>{instance} · {version}</small> <span id="stale"></span></h1>
<dl>
<div><dt>Role</dt><dd id="role" data-role="{role}">{role}</dd></div>
<div><dt>Connections</dt><dd id="connections">{connections}</dd></div>
<div><dt>Lag</dt><dd id="lag">{lag}</dd></div>
<div><dt>Pending keys</dt><dd id="pending">{pending}</dd></div>
<div><dt>Last reconcile</dt><dd id="last-reconcile">{last_reconcile}</dd></div>
<div><dt>Last error</dt><dd id="last-error">{last_error}</dd></div>
</dl>
{action}
<h2>Recent changes</h2>
<div class="scroll"><table>
<thead><tr><th>Applied</th><th>Key</th><th>Field</th><th>Change</th><th>Source</th><th>Lag</th>
</tr></thead>
<tbody id="changes">{rows}</tbody>
</table></div>
<script>
"use strict";
const historyEnabled = {history_enabled};
const $ = (id) => document.getElementById(id);
const seconds = (v) => typeof v !== "number" ? "—"
  : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(1) + " s";
const clock = (v) => v ? new Date(v).toLocaleTimeString([], {{hour12: false}}) : "—";
function setText(id, text) {{ const el = $(id); if (el) el.textContent = text; }}
function showStatus(s) {{
  setText("role", s.role || "unknown");
  $("role").dataset.role = s.role || "unknown";
  const c = s.connections || {{}};
  setText("connections", Object.keys(c).map(
    (k) => k.replace(/_/g, " ") + (c[k] ? " up" : " DOWN")).join(", ") || "—");
  setText("lag", seconds(s.last_lag_seconds));
  setText("pending", (s.pending_keys || 0) + " (+" + (s.in_flight_keys || 0) + " in flight)");
  const r = s.last_reconcile;
  setText("last-reconcile", !r ? "none yet" : r.source + " at " + clock(r.finished_at) + ": "
    + r.differences + " differences, " + r.updated + " updated, " + r.failed + " failed in "
    + seconds(r.duration_seconds));
  setText("last-error", s.last_error || "none");
}}
function showChanges(entries) {{
  const body = $("changes");
  const rows = entries.map((c) => {{
    const tr = document.createElement("tr");
    for (const text of [clock(c.applied_at), c.key_label, c.field,
        c.old_json + " → " + c.new_json, c.source, seconds(c.lag_seconds)]) {{
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }}
    return tr;
  }});
  if (rows.length) body.replaceChildren(...rows);
}}
async function refresh() {{
  try {{
    const s = await fetch("/status", {{cache: "no-store"}});
    showStatus(await s.json());
    if (historyEnabled) {{
      const h = await fetch("/history?limit={limit}", {{cache: "no-store"}});
      if (h.ok) showChanges((await h.json()).entries);
    }}
    setText("stale", "");
    document.body.dataset.refreshed = String(Date.now());
  }} catch (error) {{
    setText("stale", "(daemon not answering)");
  }}
}}
const form = $("reconcile-form");
if (form) form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  setText("reconcile-result", "reconciling…");
  try {{
    const r = await fetch("/reconcile", {{method: "POST",
      headers: {{"Authorization": "Bearer " + $("token").value}}}});
    const body = await r.json();
    setText("reconcile-result", r.ok
      ? body.differences + " differences, " + body.updated + " updated"
      : "refused: " + (body.error || r.status));
  }} catch (error) {{
    setText("reconcile-result", "failed: " + error);
  }}
  refresh();
}});
setInterval(refresh, 2000);
refresh();
</script>
</body>
</html>
"""
