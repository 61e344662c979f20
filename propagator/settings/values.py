"""Parsing of setting values: durations, database URLs, field mappings, lists."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from propagator.core.mapping import FieldMapping
from propagator.errors import ConfigurationError

__all__ = [
    "HOST_PATTERN",
    "normalize_database_url",
    "parse_duration",
    "parse_field_mapping",
    "read_tables",
    "split_list",
]

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$", re.ASCII)
HOST_PATTERN = re.compile(r"\*|\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[?[0-9a-f:.]+\]?", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ACCEPTED_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}


def read_tables(config_file: Path | None, key: str) -> list[dict[str, Any]]:
    """The file's ``[[key]]`` array of tables (none without a file), checked for shape."""
    if config_file is None:
        return []
    try:
        with config_file.open("rb") as stream:
            tables = tomllib.load(stream).get(key, [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"config file {config_file} is not valid TOML: {error}") from None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError(f"config file {config_file}: '{key}' must be [[{key}]] tables")
    return tables


def parse_duration(value: Any) -> Any:
    """Accept ``250ms``, ``5s``, ``2m``, ``1h``, ``7d``, plain seconds, or a timedelta."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group("value")) * _UNIT_SECONDS[match.group("unit")]
            try:
                return timedelta(seconds=seconds)
            except OverflowError:
                raise ValueError(f"duration {value.strip()!r} is too long") from None
    return value  # timedelta or ISO 8601: pydantic decides


def normalize_database_url(url: str) -> str:
    """``postgres://`` and SQLAlchemy driver URLs become plain ``postgresql://`` for psycopg.

    Query options (``sslmode``, ``sslrootcert``, ``application_name``…) pass through.
    """
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in _ACCEPTED_SCHEMES:
        shown = parts.scheme or "(none)"
        raise ValueError(f"must be a postgresql:// or postgres:// URL, not scheme {shown}")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("has no host")
    # Replace only the scheme: urlunsplit would drop the "//" of a URL without a host
    # part (postgresql:///db?host=/run/postgresql), which libpq then refuses.
    return "postgresql" + url[len(parts.scheme) :]


def parse_field_mapping(item: Any) -> FieldMapping:
    """``source``, ``source->target``, ``source->target:transform`` or a TOML table."""
    if isinstance(item, FieldMapping):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - {"source", "target", "transform"}
        if unknown or "source" not in item:
            raise ValueError("a mapping table needs 'source' and may have 'target', 'transform'")
        source = str(item["source"])
        return FieldMapping(source, str(item.get("target", source)), item.get("transform"))
    text = str(item).strip()
    transform: str | None = None
    arrow = text.split("->")
    if len(arrow) > 2:
        raise ValueError(f"mapping {text!r} has more than one '->'")
    last = arrow[-1]
    if ":" in last:
        last, transform = (part.strip() for part in last.rsplit(":", 1))
    source = arrow[0].strip() if len(arrow) == 2 else last
    target = last.strip()
    return FieldMapping(source, target, transform or None)


def split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value
