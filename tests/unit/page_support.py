"""Reading the rendered status page in tests: its tags, and the text of its script and style."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from typing import Any

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>&amp;\'"'
"""Text a hostile receiver, mapping or error could carry: it must stay text on the page."""


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


NODE = shutil.which("node")
"""Node runs the page's script against a stand-in DOM, where it is installed."""


def run_in_node(stand_in: str, given: dict[str, Any]) -> dict[str, Any]:
    """Run a stand-in DOM program with ``given`` on its stdin; what it printed, as JSON."""
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", stand_in],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown
