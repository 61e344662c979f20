"""The status page: rendered on the server, escaped, refreshed by one hashed script.

Every dynamic value passes through ``html.escape``; the page's only script and
its only style sheet are constants, allowed by their SHA-256 hashes in the
Content-Security-Policy (no ``'unsafe-inline'``), and the script reads what it
needs from ``data-`` attributes instead of values written into its text. It
fetches nothing but ``/status`` and ``/history`` from the daemon itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

__all__ = ["PAGE_CHANGES", "PAGE_HEADERS", "render_status_page"]

PAGE_CHANGES: Final = 20
"""How many recent changes the page lists."""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Formatting shared in spirit with the page's script below (same rules, same words).


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _clock(value: Any) -> str:
    if not isinstance(value, str):
        return "—"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
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
        limit=PAGE_CHANGES,
        style=_STYLE,
        script=_SCRIPT,
    )


_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>propagator · {role}</title>
<style>{style}</style>
</head>
<body data-history="{history_enabled}" data-limit="{limit}">
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
<script>{script}</script>
</body>
</html>
"""


_STYLE: Final = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; padding: 1rem; color: #1d2330;
       background: #f6f7f9; }
h1 { font-size: 1.2rem; margin: 0 0 .75rem; }
h1 small { color: #687080; font-weight: normal; }
dl { display: grid; grid-template-columns: repeat(auto-fit, minmax(13rem, 1fr)); gap: .5rem;
      margin: 0 0 1rem; }
dl div { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: .5rem .75rem; }
dt { color: #687080; font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
dd { margin: 0; font-size: 1.05rem; overflow-wrap: anywhere; }
#role[data-role="leader"] { color: #0a7a3b; font-weight: 600; }
#role[data-role="standby"] { color: #8a5a00; font-weight: 600; }
table { width: 100%; border-collapse: collapse; background: #fff; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e6e9ee; }
.scroll { overflow-x: auto; }
form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: 1rem 0; }
input, button { font: inherit; padding: .35rem .6rem; }
#stale { color: #b00020; }
@media (max-width: 600px) {
  body { padding: .5rem; }
  dl { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  table { font-size: .8rem; }
  th, td { padding: .3rem .25rem; }
}
"""

_SCRIPT: Final = """
"use strict";
const historyEnabled = document.body.dataset.history === "true";
const limit = Number(document.body.dataset.limit) || 20;
// From the origin: a page opened as http://user:token@host/ must not put them in fetch URLs.
const api = (path) => location.origin + path;
const $ = (id) => document.getElementById(id);
const seconds = (v) => typeof v !== "number" ? "—"
  : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(1) + " s";
const clock = (v) => v ? new Date(v).toLocaleTimeString([], {hour12: false}) : "—";
function setText(id, text) { const el = $(id); if (el) el.textContent = text; }
function showStatus(s) {
  setText("role", s.role || "unknown");
  $("role").dataset.role = s.role || "unknown";
  const c = s.connections || {};
  setText("connections", Object.keys(c).map(
    (k) => k.replace(/_/g, " ") + (c[k] ? " up" : " DOWN")).join(", ") || "—");
  setText("lag", seconds(s.last_lag_seconds));
  setText("pending", (s.pending_keys || 0) + " (+" + (s.in_flight_keys || 0) + " in flight)");
  const r = s.last_reconcile;
  setText("last-reconcile", !r ? "none yet" : r.source + " at " + clock(r.finished_at) + ": "
    + r.differences + " differences, " + r.updated + " updated, " + r.failed + " failed in "
    + seconds(r.duration_seconds));
  setText("last-error", s.last_error || "none");
}
function showChanges(entries) {
  const body = $("changes");
  const rows = entries.map((c) => {
    const tr = document.createElement("tr");
    for (const text of [clock(c.applied_at), c.key_label, c.field,
        c.old_json + " → " + c.new_json, c.source, seconds(c.lag_seconds)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  });
  if (rows.length) body.replaceChildren(...rows);
}
async function refresh() {
  try {
    const s = await fetch(api("/status"), {cache: "no-store"});
    if (s.status === 401) {
      setText("stale", "(token needed: reload the page)");
      return;
    }
    showStatus(await s.json());
    if (historyEnabled) {
      const h = await fetch(api("/history?limit=" + limit), {cache: "no-store"});
      if (h.ok) showChanges((await h.json()).entries);
    }
    setText("stale", "");
    document.body.dataset.refreshed = String(Date.now());
  } catch (error) {
    setText("stale", "(daemon not answering)");
  }
}
const form = $("reconcile-form");
if (form) form.addEventListener("submit", async (event) => {
  event.preventDefault();
  setText("reconcile-result", "reconciling…");
  try {
    const r = await fetch(api("/reconcile"), {method: "POST",
      headers: {"Authorization": "Bearer " + $("token").value}});
    const body = await r.json();
    setText("reconcile-result", r.ok
      ? body.differences + " differences, " + body.updated + " updated"
      : "refused: " + (body.error || r.status));
  } catch (error) {
    setText("reconcile-result", "failed: " + error);
  }
  refresh();
});
setInterval(refresh, 2000);
refresh();
"""

PAGE_HEADERS: Final = (
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)
