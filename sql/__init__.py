"""SQL a DBA can read, shipped as files and loaded by name (installed as ``propagator.sql``)."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["load_sql"]


@cache
def load_sql(relative_path: str) -> str:
    """The text of ``sql/<relative_path>`` (for example ``triggers/notify.sql``).

    Read on first use and kept: the files never change under a running process, and
    a statement sent in every write transaction must not cost a file read.
    """
    resource = resources.files(__name__).joinpath(*relative_path.split("/"))
    return resource.read_text(encoding="utf-8")
