"""Reading the documentation in tests: its sections, and defaults as the docs write them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section(document: str, heading: str) -> str:
    """The text of one ``## heading`` section."""
    text = (ROOT / document).read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shown_default(value: object, *, text: bool = True) -> str | None:
    """A default as the docs write it (``50ms``, ``10m``, ``true``); None: not comparable.

    ``text``: strings are shown as they are (else they are not compared).
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (text and isinstance(value, str)):
        return str(value)
    if isinstance(value, timedelta):
        milliseconds = round(value.total_seconds() * 1000)
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if milliseconds and milliseconds % size == 0:
                return f"{milliseconds // size}{unit}"
        return f"{milliseconds}ms"
    return None
