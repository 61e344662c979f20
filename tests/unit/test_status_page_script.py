"""The status page's script run by Node against a stand-in DOM and made-up daemon answers.

It checks what a browser test cannot click: the "Reconcile now" result, with one
mapping and with several. Skipped where Node is not installed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from propagator.observability.statuspage import render_status_page
from tests.unit.page_support import NODE, run_in_node

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed; the script is not run")

# Elements are plain objects; getElementById knows only the ids the page rendered.
STAND_IN = r"""
const vm = require("vm");
const given = JSON.parse(require("fs").readFileSync(0, "utf8"));
const elements = {}, fetched = [];
for (const id of given.ids) elements[id] = {textContent: "", dataset: {}, children: [],
  replaceChildren(...c) { this.children = c; }, appendChild(c) { this.children.push(c); },
  addEventListener(type, listener) { this.listener = listener; }};
const element = () => ({textContent: "", dataset: {}, children: [],
  appendChild(c) { this.children.push(c); }});
const document = {body: {dataset: given.body}, createElement: element,
  getElementById: (id) => elements[id] || null};
const origin = "http://127.0.0.1:9";
async function fetch(url, options) {
  const path = url.slice(origin.length);
  fetched.push((options && options.method || "GET") + " " + path);
  const [status, body] = given.answers[path] || [404, {error: "not here"}];
  return {ok: status < 300, status, json: async () => body};
}
const settle = () => new Promise((resolve) => setTimeout(resolve, 10));
(async () => {
  vm.runInNewContext(given.script, {document, fetch, location: {origin},
    setInterval: () => 0, Date, Number, String, Math, Object, Array});
  await settle();
  elements["token"].value = "t";
  elements["reconcile-form"].listener({preventDefault() {}});
  await settle();
  const rows = (id) => elements[id].children.map((tr) => tr.children.map((td) => td.textContent));
  console.log(JSON.stringify({fetched, result: elements["reconcile-result"].textContent,
    mappings: elements["mappings"] ? rows("mappings") : null, changes: rows("changes"),
    error: elements["last-error"].textContent}));
})();
"""


def run_page(status: dict[str, Any], answers: dict[str, tuple[int, Any]]) -> dict[str, Any]:
    """Render the page for ``status``, run its script with ``answers`` by path; what it shows."""
    page = render_status_page(status, [], history_enabled=True, can_reconcile=True)
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    given = {
        "ids": re.findall(r'id="([^"]+)"', page),
        "body": {"history": "true", "limit": "20"},
        "answers": {"/status": (200, status), **answers},
        "script": script,
    }
    return run_in_node(STAND_IN, given)


def one(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": "leader", "connections": {"writer": True}, **extra}


SEVERAL = {
    "role": "leader",
    "pending_keys": 0,
    "mappings": [one("jobs"), one("orders", last_error="<script>x</script>"), one("qa")],
}
HISTORY = "/history?limit=20&mapping=*"


def test_reconcile_now_sums_every_mappings_summary() -> None:
    """Several summaries under ``mappings``: how many mappings, differences and updates summed."""
    summaries = {
        "jobs": {"differences": 2, "updated": 2, "failed": 0},
        "orders": {"differences": 0, "updated": 0, "failed": 0},
        "qa": {"differences": 1, "updated": 0, "failed": 1},
    }
    change = {"mapping": "qa", "key_label": "<b>7</b>", "old_json": "1", "new_json": "2"}
    shown = run_page(
        SEVERAL,
        {"/reconcile": (200, {"mappings": summaries}), HISTORY: (200, {"entries": [change]})},
    )
    assert shown["result"] == "3 mappings: 3 differences, 2 updated"
    assert "POST /reconcile" in shown["fetched"]
    assert f"GET {HISTORY}" in shown["fetched"]
    assert [row[:2] for row in shown["mappings"]] == [
        ["jobs", "leader"],
        ["orders", "leader"],
        ["qa", "leader"],
    ]
    assert shown["mappings"][1][6] == "<script>x</script>"  # set as text, never parsed
    assert shown["error"] == "1 mapping reports an error"
    assert [row[1:3] for row in shown["changes"]] == [["qa", "<b>7</b>"]]


def test_reconcile_now_with_one_mapping_and_when_refused() -> None:
    """One mapping: its summary as before; a refusal shows the daemon's reason."""
    status = {"role": "leader", "mappings": [one("jobs")]}
    shown = run_page(status, {"/reconcile": (200, {"differences": 4, "updated": 3})})
    assert shown["result"] == "4 differences, 3 updated"
    assert shown["mappings"] is None
    refused = run_page(status, {"/reconcile": (409, {"error": "ask the leader"})})
    assert refused["result"] == "refused: ask the leader"
