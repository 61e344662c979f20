"""The status page's Webhooks table: escaped on the server, refreshed by the script, absent
without webhooks (the page otherwise unchanged)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from datetime import datetime
from typing import Any

import pytest

from propagator.observability.statuspage import PAGE_HEADERS, render_status_page
from propagator.observability.statuspage_webhooks import section
from tests.unit.page_support import HOSTILE, NODE, parse, run_in_node

DELIVERED = "2024-05-01T10:00:00.250000+00:00"


def sender(**extra: Any) -> dict[str, Any]:
    return {
        "sandbox_history": "propagator",
        "active": True,
        "cursor": 10,
        "pending": 0,
        "lag_seconds": 0.0,
        "failing": False,
        "failures_in_a_row": 0,
        "last_error": None,
        "last_delivered_at": None,
        **extra,
    }


def endpoint(name: str, senders: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One entry of ``/status``'s ``webhooks``, as ``WebhookSenders.status()`` gives it."""
    return {
        "name": name,
        "origin": "https://hooks.example.com",
        "signed": True,
        "mappings": [],
        "fields": [],
        "sources": [],
        "max_batch": 100,
        "max_wait_seconds": 1.0,
        "timeout_seconds": 10.0,
        "failing": False,
        "pending": 0,
        "lag_seconds": 0.0,
        "senders": senders,
        **extra,
    }


def base_status() -> dict[str, Any]:
    return {
        "instance_id": "host-1",
        "version": "1.0",
        "role": "leader",
        "connections": {"production_listener": True, "writer": True},
        "last_lag_seconds": 0.25,
        "pending_keys": 0,
        "in_flight_keys": 0,
        "last_reconcile": None,
        "last_error": None,
    }


def with_webhooks() -> dict[str, Any]:
    """Four endpoints: failing with a hostile answer, retrying, on standby, and fine with
    two senders (two sandbox histories)."""
    failing = endpoint(
        HOSTILE,
        [sender(failing=True, failures_in_a_row=9, last_error=f"HTTP 500: {HOSTILE}")],
        origin=HOSTILE,
        failing=True,
        pending=1234,
        lag_seconds=5400.0,
    )
    retrying = endpoint(
        "search",
        [sender(failures_in_a_row=2, last_error="search did not answer within 10 s")],
        pending=3,
        lag_seconds=42.25,
    )
    standby = endpoint("audit", [sender(active=False)])
    fine = endpoint(
        "crm",
        [
            sender(last_delivered_at="2024-04-30T08:00:00+00:00", last_error="HTTP 503"),
            sender(sandbox_history="qa", last_delivered_at=DELIVERED, last_error="HTTP 503"),
        ],
        lag_seconds=0.125,
    )
    return {**base_status(), "webhooks": [failing, retrying, standby, fine]}


def rows(page: str) -> list[list[str]]:
    """The Webhooks table's rows as the text of their cells (entities decoded)."""
    body = page.split('id="webhooks">', 1)[1].split("</tbody>", 1)[0]
    return [
        [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def local(moment: str) -> str:
    return datetime.fromisoformat(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def render(status: dict[str, Any]) -> str:
    return render_status_page(status, [], history_enabled=True, can_reconcile=True)


def test_the_webhooks_table_lists_each_endpoint() -> None:
    """Name, origin, state, pending, lag, last delivered and last error, per endpoint."""
    page = render(with_webhooks())
    assert "<h2>Webhooks</h2>" in page
    assert rows(page) == [
        [HOSTILE, HOSTILE, "FAILING", "1234", "1.5 h", "—", f"HTTP 500: {HOSTILE}"],
        ["search", "https://hooks.example.com", "retrying", "3", "42.3 s", "—",
         "search did not answer within 10 s"],
        ["audit", "https://hooks.example.com", "standby", "0", "0 ms", "—", "none"],
        ["crm", "https://hooks.example.com", "ok", "0", "125 ms", local(DELIVERED), "HTTP 503"],
    ]  # fmt: skip


def test_every_value_a_receiver_or_the_settings_give_stays_text() -> None:
    """Markup in an endpoint's name, origin or error is escaped: no tag, no handler."""
    page = render(with_webhooks())
    tags = parse(page)
    names = [tag for tag, _ in tags.tags]
    assert "img" not in names
    assert names.count("script") == 1
    assert names.count("style") == 1
    assert all(not name.startswith("on") for _, attrs in tags.tags for name in attrs)
    assert all("style" not in attrs for _, attrs in tags.tags)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&amp;amp;" in page  # an entity in a receiver's answer is shown, not decoded
    assert "alert" not in "".join(tags.inline["script"])


def test_a_failing_endpoint_is_marked_for_the_style_sheet() -> None:
    """The State cell carries its word as data-state; the style sheet makes FAILING stand out."""
    tags = parse(render(with_webhooks()))
    states = [attrs["data-state"] for tag, attrs in tags.tags if "data-state" in attrs]
    assert states == ["FAILING", "retrying", "standby", "ok"]
    (style,) = tags.inline["style"]
    assert 'td[data-state="FAILING"] { color: #b00020;' in style


def test_the_csp_still_names_the_pages_only_script_and_style() -> None:
    """With webhooks the page has one script and one style, both allowed by their hash."""
    tags = parse(render(with_webhooks()))
    (script,) = tags.inline["script"]
    (style,) = tags.inline["style"]
    header = dict(PAGE_HEADERS)["Content-Security-Policy"]

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{digest(script)}';" in header
    assert f"style-src 'sha256-{digest(style)}';" in header
    assert "function showWebhooks(s)" in script
    assert "innerHTML" not in script
    assert parse(render(base_status())).inline["script"] == [script]


def test_without_webhooks_the_page_is_unchanged() -> None:
    """No ``webhooks`` (or an empty list, or junk): no table; with webhooks, the table is the
    only difference."""
    status = base_status()
    plain = render(status)
    for junk in ([], None, "none", [None, 3, "x"]):
        assert render({**status, "webhooks": junk}) == plain
    assert 'id="webhooks"' not in plain
    assert "<h2>Webhooks</h2>" not in plain
    listed = with_webhooks()
    page = render(listed)
    table = section(listed)
    assert table in page
    assert page.replace(table, "", 1) == plain


LAGS = (0, 0.0125, 0.5, 42.25, 59.94, 90, 150, 7200, 3 * 86400, None, -1)


def lags_status() -> dict[str, Any]:
    """An endpoint per lag in ``LAGS``; the last ones with odd values (as a bug might give)."""
    webhooks = [endpoint(f"e{n}", [sender()], lag_seconds=lag) for n, lag in enumerate(LAGS)]
    webhooks[-1]["senders"] = [sender(last_delivered_at="yesterday"), "junk", None]
    webhooks[-2]["senders"] = "junk"
    return {**base_status(), "webhooks": webhooks}


def test_lag_and_last_delivery_formats() -> None:
    """Lag from milliseconds to days, a tie rounded up (as the script does); anything else
    shown as a dash or as given."""
    shown = rows(render(lags_status()))
    assert [row[4] for row in shown] == [
        "0 ms", "13 ms", "500 ms", "42.3 s", "59.9 s", "2 min", "3 min", "2.0 h", "3.0 d",
        "—", "—",
    ]  # fmt: skip
    assert shown[-1][2:] == ["ok", "0", "—", "yesterday", "none"]
    assert shown[-2][2:] == ["standby", "0", "—", "—", "none"]


# The script, run by Node against a stand-in DOM.

STAND_IN = r"""
const vm = require("vm");
const given = JSON.parse(require("fs").readFileSync(0, "utf8"));
const element = () => ({textContent: "", dataset: {}, children: [],
  replaceChildren(...c) { this.children = c; }, appendChild(c) { this.children.push(c); },
  addEventListener() {}});
const elements = {};
for (const id of given.ids) elements[id] = element();
const document = {body: {dataset: given.body}, createElement: element,
  getElementById: (id) => elements[id] || null};
const origin = "http://127.0.0.1:9";
async function fetch(url) {
  const [status, body] = given.answers[url.slice(origin.length)] || [404, {}];
  return {ok: status < 300, status, json: async () => body};
}
(async () => {
  vm.runInNewContext(given.script, {document, fetch, location: {origin},
    setInterval: () => 0, Date, Number, String, Math, Object, Array});
  await new Promise((resolve) => setTimeout(resolve, 10));
  const table = elements["webhooks"];
  console.log(JSON.stringify({stale: elements["stale"].textContent, rows: table
    ? table.children.map((tr) => tr.children.map((td) => [td.textContent, td.dataset.state]))
    : null}));
})();
"""


def run_script(page_status: dict[str, Any], answered: dict[str, Any]) -> dict[str, Any]:
    """The page rendered for ``page_status``, its script run with ``answered`` as /status."""
    page = render(page_status)
    given = {
        "ids": re.findall(r'id="([^"]+)"', page),
        "body": {"history": "false", "limit": "20"},
        "answers": {"/status": (200, answered)},
        "script": parse(page).inline["script"][0],
    }
    return run_in_node(STAND_IN, given)


@pytest.mark.skipif(NODE is None, reason="node is not installed; the script is not run")
@pytest.mark.parametrize("status", [with_webhooks(), lags_status()], ids=["states", "formats"])
def test_the_script_refreshes_the_table_as_the_server_renders_it(status: dict[str, Any]) -> None:
    """Same cells and states as the server's rows; hostile text is set as text, never parsed."""
    first = {**status, "webhooks": [endpoint("crm", [sender()])]}
    shown = run_script(first, status)
    assert shown["stale"] == ""
    assert [[text for text, _ in row] for row in shown["rows"]] == rows(render(status))
    states = [cell[1] for row in shown["rows"] for cell in row if cell[1] is not None]
    assert states == [row[2][0] for row in shown["rows"]]  # only the State cells carry one
    if status == with_webhooks():
        assert states == ["FAILING", "retrying", "standby", "ok"]


@pytest.mark.skipif(NODE is None, reason="node is not installed; the script is not run")
def test_the_script_leaves_a_page_without_webhooks_alone() -> None:
    """No table rendered: the refresh still succeeds and builds none."""
    shown = run_script(base_status(), with_webhooks())
    assert shown == {"stale": "", "rows": None}
