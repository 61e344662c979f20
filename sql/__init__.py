"""SQL a DBA can read, shipped as files and loaded by name (installed as ``propagator.sql``)."""

from __future__ import annotations

from importlib import resources

__all__ = ["load_sql"]


def load_sql(relative_path: str) -> str:
    """The text of ``sql/<relative_path>`` (for example ``triggers/notify.sql``)."""
    resource = resources.files(__name__).joinpath(*relative_path.split("/"))
    return resource.read_text(encoding="utf-8")
