"""The status page as HTML text, without a browser: every value escaped, a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from datetime import datetime
from typing import Any

from propagator.observability.statuspage import PAGE_HEADERS, render_status_page
from tests.unit.page_support import HOSTILE, parse


def hostile_status() -> dict[str, Any]:
    return {
        "instance_id": HOSTILE,
        "version": HOSTILE,
        "role": HOSTILE,
        "connections": {HOSTILE: True, "sandbox": False},
        "last_lag_seconds": 0.25,
        "pending_keys": HOSTILE,
        "in_flight_keys": 2,
        "last_reconcile": {"source": HOSTILE, "finished_at": HOSTILE, "differences": HOSTILE},
        "last_error": HOSTILE,
    }


def hostile_change() -> dict[str, Any]:
    return {
        "applied_at": "0001-01-01T00:00:00",
        "key_label": HOSTILE,
        "field": HOSTILE,
        "old_json": HOSTILE,
        "new_json": '"</td></tr></tbody><script>alert(3)</script>"',
        "source": HOSTILE,
        "lag_seconds": HOSTILE,
    }


def csp() -> dict[str, list[str]]:
    header = dict(PAGE_HEADERS)["Content-Security-Policy"]
    directives = (part.strip().split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_every_hostile_value_is_text_not_markup() -> None:
    """Markup in any status field or change row stays text: one script, one style, no handlers."""
    page = render_status_page(
        hostile_status(), [hostile_change()], history_enabled=True, can_reconcile=True
    )
    elements = parse(page)
    tags = [tag for tag, _ in elements.tags]
    assert tags.count("script") == 1
    assert tags.count("style") == 1
    assert "img" not in tags
    assert all(not name.startswith("on") for _, attrs in elements.tags for name in attrs)
    assert all("style" not in attrs for _, attrs in elements.tags)
    assert "alert" not in "".join(elements.inline["script"])
    assert page.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") >= 8
    assert "&amp;amp;" in page  # an entity typed in a value is shown, not decoded
    # The change row keeps its six cells: the closing tags in the value are text.
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('id="changes">', 1)[1], re.S)
    assert len(rows) == 1
    assert len(re.findall(r"<td>", rows[0])) == 6


def test_data_attributes_are_escaped_and_fixed() -> None:
    """The role lands in a quoted data attribute escaped; the script's inputs are fixed words."""
    elements = parse(
        render_status_page(hostile_status(), [], history_enabled=False, can_reconcile=False)
    )
    role = next(attrs for tag, attrs in elements.tags if attrs.get("id") == "role")
    assert role["data-role"] == HOSTILE  # parsed back: the quotes did not end the attribute
    body = next(attrs for tag, attrs in elements.tags if tag == "body")
    assert body == {"data-history": "false", "data-limit": "20"}


def test_csp_allows_only_the_pages_own_script_and_style_by_hash() -> None:
    """script-src and style-src name the SHA-256 of the page's script and style; no inline."""
    page = render_status_page(hostile_status(), [], history_enabled=True, can_reconcile=True)
    elements = parse(page)
    policy = csp()
    (script,) = elements.inline["script"]
    (style,) = elements.inline["style"]
    assert policy["script-src"] == [sha256_source(script)]
    assert policy["style-src"] == [sha256_source(style)]
    assert "'unsafe-inline'" not in dict(PAGE_HEADERS)["Content-Security-Policy"]
    assert policy["default-src"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    # The script is the same text whatever the status: the hash never goes stale.
    other = render_status_page({}, [], history_enabled=False, can_reconcile=False)
    assert parse(other).inline["script"] == [script]


def test_the_page_carries_no_token_and_loads_nothing_from_elsewhere() -> None:
    """The reconcile form asks for the token; no src/href points off the daemon."""
    page = render_status_page(hostile_status(), [], history_enabled=True, can_reconcile=True)
    assert 'id="token" type="password"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert 'fetch(api("/status")' in page
    assert "const api = (path) => location.origin + path;" in page


# Several mappings: the cards over all of them, a Mappings table, a Mapping column.

FINISHED = "2024-05-01T10:00:00+00:00"


def mapping(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "role": "leader",
        "connections": {"production_listener": True, "sandbox_lock": True, "writer": True},
        "catchup_done": True,
        "pending_keys": 0,
        "in_flight_keys": 0,
        "last_reconcile": None,
        "last_lag_seconds": None,
        "last_error": None,
        **extra,
    }


def two_mappings(**second: Any) -> dict[str, Any]:
    """A /status with ``jobs`` (also flat at the top) and a hostile second mapping."""
    jobs = mapping(
        "jobs",
        pending_keys=3,
        in_flight_keys=1,
        last_lag_seconds=0.25,
        last_reconcile={"source": "event", "finished_at": FINISHED, "differences": 2,
                        "updated": 2, "failed": 0, "duration_seconds": 0.5},
    )  # fmt: skip
    hostile = mapping(
        HOSTILE,
        **{
            "role": "standby",
            "connections": {"production_listener": True, "sandbox_lock": False, "writer": True},
            "pending_keys": 4,
            "last_lag_seconds": 1.5,
            "last_error": HOSTILE,
            **second,
        },
    )
    flat = {key: value for key, value in jobs.items() if key != "name"}
    return {
        "instance_id": "host-1",
        "version": "1.0",
        **flat,
        "role": "mixed",
        "pending_keys": 7,
        "in_flight_keys": 1,
        "mappings": [jobs, hostile],
    }


def table_cells(page: str, body_id: str) -> list[list[str]]:
    """Each row of ``<tbody id=body_id>`` as the text of its cells (entities decoded)."""
    body = page.split(f'id="{body_id}">', 1)[1].split("</tbody>", 1)[0]
    return [
        [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def card(page: str, element_id: str) -> str:
    match = re.search(rf'<dd id="{element_id}"[^>]*>(.*?)</dd>', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def test_several_mappings_each_listed_with_every_value_escaped() -> None:
    """The Mappings table has a row per mapping; markup in a name or an error stays text."""
    page = render_status_page(two_mappings(), [], history_enabled=True, can_reconcile=True)
    elements = parse(page)
    tags = [tag for tag, _ in elements.tags]
    assert tags.count("script") == 1
    assert "img" not in tags
    assert all(not name.startswith("on") for _, attrs in elements.tags for name in attrs)
    assert "<h2>Mappings</h2>" in page
    clock = datetime.fromisoformat(FINISHED).astimezone().strftime("%H:%M:%S")
    assert table_cells(page, "mappings") == [
        ["jobs", "leader", "all up", "250 ms", "3 (+1 in flight)",
         f"event at {clock}: 2 differences, 2 updated", "none"],
        [HOSTILE, "standby", "sandbox lock DOWN", "1.5 s", "4 (+0 in flight)", "none yet",
         HOSTILE],
    ]  # fmt: skip
    roles = [
        attrs["data-role"] for tag, attrs in elements.tags if tag == "td" and "data-role" in attrs
    ]
    assert roles == ["leader", "standby"]
    # A role lands in a quoted data attribute: parsed back whole, the quotes did not end it.
    elements = parse(
        render_status_page(two_mappings(role=HOSTILE), [], history_enabled=True, can_reconcile=True)
    )
    roles = [
        attrs["data-role"] for tag, attrs in elements.tags if tag == "td" and "data-role" in attrs
    ]
    assert roles == ["leader", HOSTILE]
    assert "img" not in [tag for tag, _ in elements.tags]


def test_several_mappings_cards_show_the_whole_process() -> None:
    """Role mixed, pending over all, errors counted, the DOWN links and the greatest lag."""
    page = render_status_page(two_mappings(), [], history_enabled=True, can_reconcile=False)
    clock = datetime.fromisoformat(FINISHED).astimezone().strftime("%H:%M:%S")
    assert card(page, "role") == "mixed"
    assert card(page, "pending") == "7 (+1 in flight)"
    assert card(page, "last-error") == "1 mapping reports an error"
    assert card(page, "connections") == f"{HOSTILE}: sandbox lock DOWN"
    assert card(page, "lag") == "1.5 s"
    assert card(page, "last-reconcile") == (
        f"jobs: event at {clock}: 2 differences, 2 updated, 0 failed in 500 ms"
    )
    calm = two_mappings(last_error=None, connections={"writer": True})
    calm_page = render_status_page(calm, [], history_enabled=True, can_reconcile=False)
    assert card(calm_page, "last-error") == "none"
    assert card(calm_page, "connections") == "all up"
    status = two_mappings()
    status["mappings"][0]["last_error"] = "sandbox refused"
    assert card(render_status_page(status, [], history_enabled=True, can_reconcile=False),
                "last-error") == "2 mappings report errors"  # fmt: skip


def test_several_mappings_recent_changes_name_their_mapping() -> None:
    """A Mapping column after Applied; the empty table spans seven columns."""
    change = {**hostile_change(), "mapping": HOSTILE}
    page = render_status_page(two_mappings(), [change], history_enabled=True, can_reconcile=False)
    headings = re.findall(r"<th>(.*?)</th>", page.split("<h2>Recent changes</h2>", 1)[1])
    assert headings == ["Applied", "Mapping", "Key", "Field", "Change", "Source", "Lag"]
    (row,) = table_cells(page, "changes")
    assert len(row) == 7
    assert row[1] == HOSTILE
    assert "img" not in [tag for tag, _ in parse(page).tags]
    empty = render_status_page(two_mappings(), [], history_enabled=False, can_reconcile=False)
    assert '<td colspan="7">history is disabled</td>' in empty


def test_one_mapping_renders_as_before() -> None:
    """One entry under ``mappings`` changes nothing: no Mappings table, no Mapping column."""
    status = hostile_status()
    listed = {**status, "mappings": [{"name": "jobs", **status}]}
    for history_enabled in (True, False):
        flat = render_status_page(
            status, [hostile_change()], history_enabled=history_enabled, can_reconcile=True
        )
        page = render_status_page(
            listed, [hostile_change()], history_enabled=history_enabled, can_reconcile=True
        )
        assert page == flat
    assert 'id="mappings"' not in page
    assert "<th>Mapping</th>" not in page
    assert len(table_cells(page, "changes")[0]) == 6
    empty = render_status_page(listed, [], history_enabled=False, can_reconcile=False)
    assert '<td colspan="6">history is disabled</td>' in empty


def test_the_script_builds_text_nodes_and_asks_for_every_mappings_history() -> None:
    """No innerHTML anywhere; the history refresh asks for mapping=* like the server does."""
    (script,) = parse(
        render_status_page(two_mappings(), [], history_enabled=True, can_reconcile=True)
    ).inline["script"]
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert 'api("/history?limit=" + limit + "&mapping=*")' in script
    assert "td.textContent = text;" in script


def test_a_production_trigger_problem_shows_in_the_last_error_card() -> None:
    """Triggers not current: the Last error card (and a mapping's row) says so first, escaped;
    current triggers leave the page as it was."""
    problem = f"production triggers missing or not current on {HOSTILE}: not installed"
    status = {**hostile_status(), "last_error": None}
    calm = {**status, "triggers": {"current": True, "problem": None}}
    plain = render_status_page(status, [], history_enabled=True, can_reconcile=False)
    assert render_status_page(calm, [], history_enabled=True, can_reconcile=False) == plain
    troubled = {**status, "triggers": {"current": False, "problem": problem}}
    page = render_status_page(troubled, [], history_enabled=True, can_reconcile=False)
    assert card(page, "last-error") == problem
    assert "img" not in [tag for tag, _ in parse(page).tags]
    both = {**troubled, "last_error": "sandbox refused"}
    page = render_status_page(both, [], history_enabled=True, can_reconcile=False)
    assert card(page, "last-error") == f"{problem}; sandbox refused"
    several = two_mappings(last_error=None)
    several["mappings"][0]["triggers"] = {"current": False, "problem": problem}
    page = render_status_page(several, [], history_enabled=True, can_reconcile=False)
    assert card(page, "last-error") == "1 mapping reports an error"
    assert table_cells(page, "mappings")[0][-1] == problem
