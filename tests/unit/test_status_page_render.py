"""The status page as HTML text, without a browser: every value escaped, a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

from propagator.observability.statuspage import PAGE_HEADERS, render_status_page

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>&amp;\'"'


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in self.inline else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.inline[self._open].append(data)


def parse(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    elements.close()
    return elements


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
