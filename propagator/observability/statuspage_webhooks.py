"""The status page's Webhooks table: each endpoint of ``/status``'s ``webhooks`` list.

Rendered on the server with every value passed through ``html.escape``: a receiver
writes part of ``last_error`` (its status and the start of its answer), so it is
hostile input like any other. The table's rules and script are added to the page's
own constants (``with_style``, ``with_script``), so the Content-Security-Policy
hashes cover them; the page's script calls ``showWebhooks`` after each ``/status``
it fetches, which fills the table with text nodes, in the same words and formats
as ``section``. Without webhooks ``/status`` has no ``webhooks`` list, the page no
table, and ``showWebhooks`` finds nothing to fill.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

__all__ = ["section", "with_script", "with_style"]

_STATE: Final = 2
"""The column whose cell also carries its text as ``data-state``, for the style sheet."""


def _fixed(value: float, places: int) -> str:
    """``value`` with ``places`` decimals, a tie rounded up: as the script's toFixed does."""
    step = Decimal(1).scaleb(-places)
    return str(Decimal(value).quantize(step, rounding=ROUND_HALF_UP))


def _duration(value: Any) -> str:
    """A lag: milliseconds to days (an endpoint may be behind for long)."""
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return "—"
    if value < 1:
        return f"{_fixed(value * 1000, 0)} ms"
    if value < 60:
        return f"{_fixed(value, 1)} s"
    if value < 3600:
        return f"{_fixed(value / 60, 0)} min"
    if value < 86400:
        return f"{_fixed(value / 3600, 1)} h"
    return f"{_fixed(value / 86400, 1)} d"


def _moment(value: Any) -> str:
    """A date and local time: the last delivery may be days ago."""
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return str(value)


def _state(endpoint: Mapping[str, Any], senders: Sequence[Mapping[str, Any]]) -> str:
    """FAILING past its failing_after; standby when another replica sends; retrying
    while requests fail; otherwise ok."""
    active = [sender for sender in senders if sender.get("active")]
    if endpoint.get("failing"):
        return "FAILING"
    if not active:
        return "standby"
    if any(sender.get("failures_in_a_row") for sender in active):
        return "retrying"
    return "ok"


def _cells(endpoint: Mapping[str, Any]) -> list[str]:
    """One endpoint's row as text: name, origin, state, pending, lag, last delivered, last
    error (its senders' distinct errors; each sandbox history it reads has a sender)."""
    found = endpoint.get("senders")
    senders = [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []
    errors = dict.fromkeys(str(s["last_error"]) for s in senders if s.get("last_error"))
    delivered = [str(s["last_delivered_at"]) for s in senders if s.get("last_delivered_at")]
    return [
        str(endpoint.get("name") or ""),
        str(endpoint.get("origin") or ""),
        _state(endpoint, senders),
        str(endpoint.get("pending") or 0),
        _duration(endpoint.get("lag_seconds")),
        _moment(max(delivered, default=None)),
        "; ".join(errors) or "none",
    ]


def _row(endpoint: Mapping[str, Any]) -> str:
    cells = [html.escape(cell) for cell in _cells(endpoint)]
    shown = [f"<td>{cell}</td>" for cell in cells]
    shown[_STATE] = f'<td data-state="{cells[_STATE]}">{cells[_STATE]}</td>'
    return "<tr>" + "".join(shown) + "</tr>"


def section(status: Mapping[str, Any]) -> str:
    """The Webhooks heading and table; empty when ``status`` lists no endpoint."""
    found = status.get("webhooks")
    endpoints = [w for w in found if isinstance(w, dict)] if isinstance(found, list) else []
    if not endpoints:
        return ""
    return _TABLE.format(rows="".join(map(_row, endpoints)))


_TABLE: Final = """<h2>Webhooks</h2>
<div class="scroll"><table>
<thead><tr><th>Endpoint</th><th>Origin</th><th>State</th><th>Pending</th><th>Lag</th>
<th>Last delivered</th><th>Last error</th></tr></thead>
<tbody id="webhooks">{rows}</tbody>
</table></div>
"""

_STYLE: Final = """td[data-state="FAILING"] { color: #b00020; font-weight: 700; }
td[data-state="retrying"] { color: #8a5a00; font-weight: 600; }
"""

# Appended to the page's script, whose helpers ``$`` and ``row`` it uses; its first
# ``refresh()`` reaches ``showWebhooks`` only after an ``await``, when all of it has run.
# The same rules as ``_cells`` above, and the State cell's text copied to ``data-state``.
_SCRIPT: Final = """// The Webhooks table (statuspage_webhooks), refreshed from /status.
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const duration = (v) => typeof v !== "number" || !Number.isFinite(v) || v < 0 ? "—"
  : v < 1 ? (v * 1000).toFixed(0) + " ms" : v < 60 ? v.toFixed(1) + " s"
  : v < 3600 ? (v / 60).toFixed(0) + " min"
  : v < 86400 ? (v / 3600).toFixed(1) + " h" : (v / 86400).toFixed(1) + " d";
const two = (n) => String(n).padStart(2, "0");
function moment(v) {
  if (!v) return "—";
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " "
    + two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
}
function endpointState(w, senders) {
  const active = senders.filter((s) => s.active);
  return w.failing ? "FAILING" : !active.length ? "standby"
    : active.some((s) => s.failures_in_a_row) ? "retrying" : "ok";
}
function endpointCells(w) {
  const senders = (Array.isArray(w.senders) ? w.senders : []).filter(isObject);
  const errors = [...new Set(senders.filter((s) => s.last_error).map((s) => String(s.last_error)))];
  const delivered = senders.filter((s) => s.last_delivered_at)
    .map((s) => String(s.last_delivered_at)).sort().pop();
  return [String(w.name || ""), String(w.origin || ""), endpointState(w, senders),
    String(w.pending || 0), duration(w.lag_seconds), moment(delivered),
    errors.join("; ") || "none"];
}
function showWebhooks(s) {
  const body = $("webhooks");
  if (!body || !Array.isArray(s.webhooks)) return;
  body.replaceChildren(...s.webhooks.filter(isObject).map((w) => {
    const tr = row(endpointCells(w));
    tr.children[2].dataset.state = tr.children[2].textContent;
    return tr;
  }));
}
"""


def with_style(page: str) -> str:
    """The page's style sheet followed by the Webhooks table's rules."""
    return page + _STYLE


def with_script(page: str) -> str:
    """The page's script followed by the Webhooks table's part, which calls its helpers."""
    return page + _SCRIPT
