"""Named mappings: the TOML file's ``[[mappings]]``, each resolved to a full set of settings.

A mapping names the keys it changes (tables, keys, fields, filter, and optionally
its own databases, batch size and reconcile schedule); everything else comes from
the top-level settings. Without ``[[mappings]]`` the top-level settings are the one
mapping ``default``, exactly as before. Rules that span mappings are checked here,
at start, with one line naming the mappings and the key: one trigger set per
production table announces one key, and no two mappings write one sandbox column.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from propagator.core.identifiers import QualifiedName, parse_qualified_name
from propagator.core.mapping import MappingSpec
from propagator.errors import ConfigurationError
from propagator.settings.model import DEFAULT_MAPPING, Settings, named_table
from propagator.settings.values import read_tables
from propagator.settings.webhooks import WebhookSettings

__all__ = [
    "MAPPING_KEYS",
    "Configuration",
    "WatchedTable",
    "channel_for",
    "read_mapping_tables",
    "resolve_mappings",
    "watched_tables",
]

MAPPING_KEYS = (
    "name",
    "production_table",
    "sandbox_table",
    "key_columns",
    "field_mappings",
    "production_filter",
    "production_database_url",
    "sandbox_database_url",
    "batch_size",
    "reconcile_interval",
    "reconcile_method",
)
_CHANNEL_SAFE = re.compile(r"[a-z0-9_]+", re.ASCII)
_MAX_CHANNEL = 63


@dataclass(frozen=True, slots=True)
class Configuration:
    """The top-level settings, and the selected mappings (each its own settings)."""

    settings: Settings
    mappings: tuple[Settings, ...]
    defined: tuple[str, ...]
    named: bool = False  # the file has [[mappings]] (else the one mapping is "default")
    webhooks: tuple[WebhookSettings, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.mapping_name for m in self.mappings)

    def mapping(self, name: str) -> Settings:
        for settings in self.mappings:
            if settings.mapping_name == name:
                return settings
        raise KeyError(name)


def read_mapping_tables(config_file: Path | None) -> list[dict[str, Any]]:
    """The ``[[mappings]]`` tables of the file (none without a file)."""
    return read_tables(config_file, "mappings")


def resolve_mappings(
    settings: Settings, tables: Sequence[Mapping[str, Any]], selection: Sequence[str] = ()
) -> Configuration:
    """Every mapping of the file checked, then the selected ones (all when none is selected)."""
    if tables:
        resolved = tuple(_resolve(settings, table, number) for number, table in enumerate(tables))
    else:
        resolved = (settings.named(DEFAULT_MAPPING),)
    _check_unique_names(resolved)
    _check_shared_keys(resolved)
    _check_shared_columns(resolved)
    defined = tuple(m.mapping_name for m in resolved)
    chosen = tuple(selection) or settings.selected_mappings
    unknown = [name for name in chosen if name not in defined]
    if unknown:
        raise ConfigurationError(
            f"unknown mapping {unknown[0]!r} (PROPAGATOR_MAPPINGS or --mapping); "
            f"the mappings are: {', '.join(defined)}"
        )
    selected = tuple(m for m in resolved if not chosen or m.mapping_name in chosen)
    return Configuration(settings, selected, defined, named=bool(tables))


@dataclass(frozen=True, slots=True)
class WatchedTable:
    """One production table and the mappings that read it: one trigger set, one channel."""

    production_url: str
    table: QualifiedName
    channel: str
    mappings: tuple[Settings, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.mapping_name for m in self.mappings)


def watched_tables(mappings: Sequence[Settings]) -> tuple[WatchedTable, ...]:
    """The production tables the mappings read, in the order first named."""
    grouped: dict[tuple[str, str], list[Settings]] = {}
    for mapping in mappings:
        grouped.setdefault(_production_of(mapping), []).append(mapping)
    return tuple(
        WatchedTable(url, group[0].production_table_name, group[0].channel, tuple(group))
        for (url, _), group in grouped.items()
    )


def _resolve(settings: Settings, table: Mapping[str, Any], number: int) -> Settings:
    name, label = named_table("mapping", table, number, MAPPING_KEYS)
    values = {field: getattr(settings, field) for field in Settings.model_fields}
    values.update({key: value for key, value in table.items() if key != "name"})
    values["channel"] = _top_level_channel_or_derived(settings, table)
    try:
        resolved = Settings(**values)
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "settings"
        reason = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{label}: invalid {key}: {reason}") from None
    try:
        MappingSpec(resolved.key_columns, resolved.field_mappings)
    except ValueError as error:
        raise ConfigurationError(f"{label}: invalid key_columns/field_mappings: {error}") from None
    return resolved.named(name)


def _top_level_channel_or_derived(settings: Settings, table: Mapping[str, Any]) -> str:
    production_table = table.get("production_table", settings.production_table)
    try:
        name = parse_qualified_name(str(production_table))
    except ValueError:
        return settings.channel  # validating the mapping names the bad table
    if name == settings.production_table_name:
        return settings.channel
    return channel_for(name)


def channel_for(name: QualifiedName) -> str:
    """The NOTIFY channel of a production table other than the top-level one.

    ``propagator_<table>`` (``propagator_<schema>_<table>`` outside ``public``),
    with a hash of the name when the name is not plain or too long.
    """
    plain = name.name if name.schema in (None, "public") else f"{name.schema}_{name.name}"
    channel = f"propagator_{plain}"
    if _CHANNEL_SAFE.fullmatch(channel) and len(channel) <= _MAX_CHANNEL:
        return channel
    digest = hashlib.sha256(str(name).encode()).hexdigest()[:10]
    safe = re.sub(r"[^a-z0-9_]", "_", channel.lower())[: _MAX_CHANNEL - 11]
    return f"{safe}_{digest}"


def _production_of(mapping: Settings) -> tuple[str, str]:
    url = mapping.production_database_url
    return (url.get_secret_value() if url else "", str(mapping.production_table_name))


def _sandbox_of(mapping: Settings) -> tuple[str, str]:
    url = mapping.sandbox_database_url
    return (url.get_secret_value() if url else "", str(mapping.sandbox_table_name))


def _check_unique_names(mappings: Sequence[Settings]) -> None:
    seen: set[str] = set()
    for mapping in mappings:
        if mapping.mapping_name in seen:
            raise ConfigurationError(f"mapping {mapping.mapping_name!r}: the name is used twice")
        seen.add(mapping.mapping_name)


def _check_shared_keys(mappings: Sequence[Settings]) -> None:
    """Mappings of one production table share its triggers, so they share its key."""
    first_by_table: dict[tuple[str, str], Settings] = {}
    for mapping in mappings:
        first = first_by_table.setdefault(_production_of(mapping), mapping)
        if first.key_columns != mapping.key_columns:
            raise ConfigurationError(
                f"mapping {mapping.mapping_name!r}: key_columns "
                f"({', '.join(mapping.key_columns)}) differ from mapping "
                f"{first.mapping_name!r} ({', '.join(first.key_columns)}) on the same production "
                f"table {mapping.production_table}; one trigger set announces one key"
            )


def _check_shared_columns(mappings: Sequence[Settings]) -> None:
    """Two mappings writing one sandbox column would undo each other's writes."""
    writer_of: dict[tuple[str, str, str], str] = {}
    for mapping in mappings:
        sandbox = _sandbox_of(mapping)
        for field_mapping in mapping.field_mappings:
            column = (*sandbox, field_mapping.target)
            other = writer_of.setdefault(column, mapping.mapping_name)
            if other != mapping.mapping_name:
                raise ConfigurationError(
                    f"mapping {mapping.mapping_name!r}: sandbox column "
                    f"{mapping.sandbox_table}.{field_mapping.target} is already written by "
                    f"mapping {other!r} in the same sandbox"
                )
