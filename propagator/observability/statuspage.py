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

from propagator.observability import statuspage_webhooks

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


def _reconcile_summary(last: Any, *, short: bool = False) -> str:
    if not isinstance(last, dict):
        return "none yet"
    text = (
        f"{last.get('source', '?')} at {_clock(last.get('finished_at'))}: "
        f"{last.get('differences', 0)} differences, {last.get('updated', 0)} updated"
    )
    if short:
        return text
    return f"{text}, {last.get('failed', 0)} failed in {_seconds(last.get('duration_seconds'))}"


def _links(connections: Any, *, short: bool = False) -> str:
    """Each connection ``up`` or ``DOWN``; ``short``: only the DOWN ones, or ``all up``."""
    if not isinstance(connections, dict) or not connections:
        return "—"
    shown = [(name, up) for name, up in connections.items() if not (short and up)]
    return (
        ", ".join(f"{str(name).replace('_', ' ')} {'up' if up else 'DOWN'}" for name, up in shown)
        or "all up"
    )


def _trouble(status: Mapping[str, Any]) -> str:
    """The last error, after the production trigger problem ``/status`` reports, if any."""
    triggers, error = status.get("triggers"), status.get("last_error")
    told = triggers.get("problem") if isinstance(triggers, dict) else None
    return "; ".join(str(part) for part in (told, error) if part) or "none"


def _pending(status: Mapping[str, Any]) -> str:
    return f"{status.get('pending_keys', 0)} (+{status.get('in_flight_keys', 0)} in flight)"


def _several(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The mappings when the daemon serves more than one; empty with one (the page as before)."""
    found = status.get("mappings")
    listed = found if isinstance(found, list) else []
    mappings: list[Mapping[str, Any]] = [m for m in listed if isinstance(m, dict)]
    return mappings if len(mappings) > 1 else []


def _cards(status: Mapping[str, Any], mappings: list[Mapping[str, Any]]) -> dict[str, str]:
    """The summary cards' text: the one mapping's, or over every mapping with several."""
    cards = {
        "connections": _links(status.get("connections")),
        "lag": _seconds(status.get("last_lag_seconds")),
        "last_reconcile": _reconcile_summary(status.get("last_reconcile")),
        "last_error": _trouble(status),
    }
    return {**cards, **_overall(mappings)} if mappings else cards


def _overall(mappings: list[Mapping[str, Any]]) -> dict[str, str]:
    """Which mappings are not fully connected, the greatest lag, the newest reconcile (with
    its mapping's name), and how many mappings report an error (the script does the same)."""
    broken = [
        f"{m.get('name', '')}: {_links(m.get('connections'), short=True)}"
        for m in mappings
        if _links(m.get("connections"), short=True) != "all up"
    ]
    lags = [v for m in mappings if isinstance(v := m.get("last_lag_seconds"), int | float)]
    newest = max(
        (m for m in mappings if isinstance(m.get("last_reconcile"), dict)),
        key=lambda m: str(m["last_reconcile"].get("finished_at") or ""),
        default=None,
    )
    errors = sum(1 for m in mappings if _trouble(m) != "none")
    told = {0: "none", 1: "1 mapping reports an error"}.get(errors)
    return {
        "connections": "; ".join(broken) or "all up",
        "lag": _seconds(max(lags, default=None)),
        "last_reconcile": "none yet"
        if newest is None
        else f"{newest.get('name', '')}: {_reconcile_summary(newest['last_reconcile'])}",
        "last_error": told or f"{errors} mappings report errors",
    }


def _mapping_row(mapping: Mapping[str, Any]) -> str:
    name, role, *rest = (
        html.escape(str(cell))
        for cell in (
            mapping.get("name", ""),
            mapping.get("role", "unknown"),
            _links(mapping.get("connections"), short=True),
            _seconds(mapping.get("last_lag_seconds")),
            _pending(mapping),
            _reconcile_summary(mapping.get("last_reconcile"), short=True),
            _trouble(mapping),
        )
    )
    cells = "".join(f"<td>{cell}</td>" for cell in rest)
    return f'<tr><td>{name}</td><td data-role="{role}">{role}</td>{cells}</tr>'


def _change_row(entry: Mapping[str, Any], *, several: bool) -> str:
    cells = [
        _clock(entry.get("applied_at")),
        entry.get("key_label", ""),
        entry.get("field", ""),
        f"{entry.get('old_json', 'null')} → {entry.get('new_json', 'null')}",
        entry.get("source", ""),
        _seconds(entry.get("lag_seconds")),
    ]
    if several:
        cells.insert(1, entry.get("mapping", ""))
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _headings(*, several: bool) -> list[str]:
    return ["Applied", *(["Mapping"] if several else []), "Key", "Field", "Change", "Source", "Lag"]


def render_status_page(
    status: Mapping[str, Any],
    changes: list[dict[str, Any]],
    *,
    history_enabled: bool,
    can_reconcile: bool,
) -> str:
    """The whole page as one string; every dynamic value passes through ``html.escape``.

    With several mappings (``status["mappings"]``) the cards show the process-wide
    view, a Mappings table lists each one, and the recent changes name theirs; with
    webhooks (``status["webhooks"]``) a Webhooks table lists the endpoints.
    """

    def e(value: Any) -> str:
        return html.escape(str(value))

    mappings = _several(status)
    headings = _headings(several=bool(mappings))
    rows = "".join(_change_row(entry, several=bool(mappings)) for entry in changes) or (
        f'<tr><td colspan="{len(headings)}">no changes recorded yet</td></tr>'
        if history_enabled
        else f'<tr><td colspan="{len(headings)}">history is disabled</td></tr>'
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
        pending=e(_pending(status)),
        **{name: e(text) for name, text in _cards(status, mappings).items()},
        mappings=_MAPPINGS.format(rows="".join(map(_mapping_row, mappings))) if mappings else "",
        webhooks=statuspage_webhooks.section(status),
        headings="".join(f"<th>{heading}</th>" for heading in headings),
        rows=rows,
        action=action,
        history_enabled="true" if history_enabled else "false",
        limit=PAGE_CHANGES,
        style=_STYLE,
        script=_SCRIPT,
    )


_MAPPINGS: Final = """<h2>Mappings</h2>
<div class="scroll"><table>
<thead><tr><th>Name</th><th>Role</th><th>Connections</th><th>Lag</th><th>Pending keys</th>
<th>Last reconcile</th><th>Last error</th></tr></thead>
<tbody id="mappings">{rows}</tbody>
</table></div>
"""

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
{mappings}{webhooks}{action}
<h2>Recent changes</h2>
<div class="scroll"><table>
<thead><tr>{headings}
</tr></thead>
<tbody id="changes">{rows}</tbody>
</table></div>
<script>{script}</script>
</body>
</html>
"""


_STYLE: Final = statuspage_webhooks.with_style("""
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; padding: 1rem; color: #1d2330;
       background: #f6f7f9; }
h1 { font-size: 1.2rem; margin: 0 0 .75rem; }
h1 small { color: #687080; font-weight: normal; }
dl { display: grid; grid-template-columns: repeat(auto-fit, minmax(13rem, 1fr)); gap: .5rem;
      margin: 0 0 1rem; }
dl div { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: .5rem .75rem; }
dt { color: #687080; font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; }
dd { margin: 0; font-size: 1.05rem; overflow-wrap: anywhere; }
#role[data-role="leader"], td[data-role="leader"] { color: #0a7a3b; font-weight: 600; }
#role[data-role="standby"], td[data-role="standby"] { color: #8a5a00; font-weight: 600; }
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
""")

_SCRIPT: Final = statuspage_webhooks.with_script("""
"use strict";
const historyEnabled = document.body.dataset.history === "true";
const limit = Number(document.body.dataset.limit) || 20;
// From the origin: a page opened as http://user:token@host/ must not put them in fetch URLs.
const api = (path) => location.origin + path;
const $ = (id) => document.getElementById(id);
// Several mappings: the server rendered the Mappings table and a Mapping column.
const several = $("mappings") !== null;
const seconds = (v) => typeof v !== "number" ? "—"
  : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(1) + " s";
const clock = (v) => v ? new Date(v).toLocaleTimeString([], {hour12: false}) : "—";
const trouble = (m) => [m.triggers && m.triggers.problem, m.last_error].filter((v) => v)
  .join("; ") || "none";  // the last error, after a production trigger problem
const pending = (m) => (m.pending_keys || 0) + " (+" + (m.in_flight_keys || 0) + " in flight)";
const reconciled = (r, short) => !r ? "none yet" : r.source + " at " + clock(r.finished_at)
  + ": " + r.differences + " differences, " + r.updated + " updated"
  + (short ? "" : ", " + r.failed + " failed in " + seconds(r.duration_seconds));
function links(c, short) {  // short: only the DOWN ones, or "all up"
  const keys = Object.keys(c || {});
  return !keys.length ? "—" : keys.filter((k) => !(short && c[k])).map(
    (k) => k.replace(/_/g, " ") + (c[k] ? " up" : " DOWN")).join(", ") || "all up";
}
function overall(ms) {
  const broken = ms.filter((m) => links(m.connections, true) !== "all up");
  const lags = ms.map((m) => m.last_lag_seconds).filter((v) => typeof v === "number");
  const at = (m) => String(m.last_reconcile.finished_at || "");
  const newest = ms.filter((m) => m.last_reconcile).reduce(
    (found, m) => !found || at(m) > at(found) ? m : found, null);
  const errors = ms.filter((m) => trouble(m) !== "none").length;
  return {
    connections: broken.map((m) => m.name + ": " + links(m.connections, true)).join("; ")
      || "all up",
    lag: seconds(lags.length ? Math.max(...lags) : null),
    reconcile: newest ? newest.name + ": " + reconciled(newest.last_reconcile) : "none yet",
    error: !errors ? "none" : errors === 1 ? "1 mapping reports an error"
      : errors + " mappings report errors",
  };
}
function setText(id, text) { const el = $(id); if (el) el.textContent = text; }
function row(cells, roleAt) {
  const tr = document.createElement("tr");
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === roleAt) td.dataset.role = text;
    tr.appendChild(td);
  });
  return tr;
}
function showStatus(s) {
  const ms = several && Array.isArray(s.mappings) && s.mappings.length > 1 ? s.mappings : null;
  const all = ms ? overall(ms) : null;
  setText("role", s.role || "unknown");
  $("role").dataset.role = s.role || "unknown";
  setText("connections", all ? all.connections : links(s.connections, false));
  setText("lag", all ? all.lag : seconds(s.last_lag_seconds));
  setText("pending", pending(s));
  setText("last-reconcile", all ? all.reconcile : reconciled(s.last_reconcile, false));
  setText("last-error", all ? all.error : trouble(s));
  if (ms) $("mappings").replaceChildren(...ms.map((m) => row([m.name, m.role,
    links(m.connections, true), seconds(m.last_lag_seconds), pending(m),
    reconciled(m.last_reconcile, true), trouble(m)], 1)));
  showWebhooks(s);
}
function showChanges(entries) {
  const rows = entries.map((c) => row([clock(c.applied_at), ...(several ? [c.mapping] : []),
    c.key_label, c.field, c.old_json + " → " + c.new_json, c.source, seconds(c.lag_seconds)]));
  if (rows.length) $("changes").replaceChildren(...rows);
}
function reconcileResult(body) {  // one summary, or several under "mappings"
  if (!body.mappings) return body.differences + " differences, " + body.updated + " updated";
  const all = Object.values(body.mappings);
  const sum = (k) => all.reduce((n, m) => n + (Number(m[k]) || 0), 0);
  return all.length + (all.length === 1 ? " mapping: " : " mappings: ")
    + sum("differences") + " differences, " + sum("updated") + " updated";
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
      const h = await fetch(api("/history?limit=" + limit + "&mapping=*"), {cache: "no-store"});
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
      ? reconcileResult(body)
      : "refused: " + (body.error || r.status));
  } catch (error) {
    setText("reconcile-result", "failed: " + error);
  }
  refresh();
});
setInterval(refresh, 2000);
refresh();
""")

PAGE_HEADERS: Final = (
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
)
