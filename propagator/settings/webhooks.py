"""Webhook endpoints: the TOML file's ``[[webhooks]]``, checked at start.

Every mistake stops the command with one line naming the webhook and the key.
A secret may come from the file or, better, from ``PROPAGATOR_WEBHOOK_<NAME>_SECRET``
(the environment wins); either way it is registered for masking at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from propagator.core.redact import register_secret, secrets_of_url
from propagator.core.vocabulary import SOURCES
from propagator.core.webhook_filter import DeliveryFilter
from propagator.core.webhook_urls import origin_of, url_refusal
from propagator.errors import ConfigurationError
from propagator.settings.model import Settings, named_table
from propagator.settings.values import parse_duration, read_tables

__all__ = ["WEBHOOK_KEYS", "WebhookSettings", "read_webhook_tables", "resolve_webhooks"]

WEBHOOK_KEYS: Final = (
    "name",
    "url",
    "secret",
    "mappings",
    "fields",
    "sources",
    "max_batch",
    "max_wait",
    "timeout",
    "retry_initial",
    "retry_max",
    "failing_after",
    "allow_insecure_http",
)
MAX_BATCH_LIMIT: Final = 10_000
_TOKEN_CHARS: Final = 12  # a path or query this long may hold a token: masked everywhere


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One endpoint: where to POST, what it wants, how to batch and retry."""

    name: str
    url: str = field(repr=False)  # paths and queries may carry tokens
    secret: str | None = field(default=None, repr=False)
    wanted: DeliveryFilter = field(default_factory=DeliveryFilter)
    max_batch: int = 100
    max_wait: timedelta = timedelta(seconds=1)
    timeout: timedelta = timedelta(seconds=10)
    retry_initial: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(minutes=1)
    failing_after: timedelta = timedelta(minutes=5)
    allow_insecure_http: bool = False

    @property
    def origin(self) -> str:
        """Scheme, host and port: what logs and status show (paths may carry tokens)."""
        return origin_of(self.url)

    def covers(self, mapping: str) -> bool:
        return not self.wanted.mappings or mapping in self.wanted.mappings

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "signed": self.secret is not None,
            "mappings": list(self.wanted.mappings),
            "fields": list(self.wanted.fields),
            "sources": list(self.wanted.sources),
            "max_batch": self.max_batch,
            "max_wait_seconds": self.max_wait.total_seconds(),
            "timeout_seconds": self.timeout.total_seconds(),
        }


def secret_env_name(name: str) -> str:
    """The environment variable that supplies webhook ``name``'s secret."""
    return f"PROPAGATOR_WEBHOOK_{name.upper()}_SECRET"


def read_webhook_tables(config_file: Path | None) -> list[dict[str, Any]]:
    """The ``[[webhooks]]`` tables of the file (none without a file)."""
    return read_tables(config_file, "webhooks")


def resolve_webhooks(
    tables: Sequence[Mapping[str, Any]],
    mappings: Sequence[Settings],
    environ: Mapping[str, str] | None = None,
) -> tuple[WebhookSettings, ...]:
    """Every ``[[webhooks]]`` table checked against the defined mappings."""
    environ = os.environ if environ is None else environ
    resolved: list[WebhookSettings] = []
    seen: set[str] = set()
    for number, table in enumerate(tables):
        webhook = _resolve(table, number, mappings, environ)
        if webhook.name in seen:
            raise ConfigurationError(f"webhook {webhook.name!r}: the name is used twice")
        seen.add(webhook.name)
        resolved.append(webhook)
    if resolved and not all(m.history_enabled for m in mappings):
        raise ConfigurationError(
            f"webhook {resolved[0].name!r}: webhooks are sent from the sync history, "
            "which is disabled (PROPAGATOR_HISTORY_ENABLED=false)"
        )
    return tuple(resolved)


def _resolve(
    table: Mapping[str, Any],
    number: int,
    mappings: Sequence[Settings],
    environ: Mapping[str, str],
) -> WebhookSettings:
    name, label = named_table("webhook", table, number, WEBHOOK_KEYS)
    reader = _Reader(label, table)
    url = reader.text("url", required=True)
    assert url is not None
    for hidden in _secrets_of_webhook_url(url):  # paths and queries often carry tokens
        register_secret(hidden)
    allow_insecure = reader.flag("allow_insecure_http")
    refusal = url_refusal(url, allow_insecure_http=allow_insecure)
    if refusal is not None:
        raise ConfigurationError(f"{label}: invalid {refusal[0]}: {origin_of(url)} {refusal[1]}")
    in_file = reader.text("secret")
    register_secret(in_file)  # masked even when the environment's secret wins
    secret = environ.get(secret_env_name(name)) or in_file
    if secret is not None and len(secret) < 16:
        raise ConfigurationError(
            f"{label}: invalid secret: at least 16 characters are needed "
            f"(from 'secret' or {secret_env_name(name)})"
        )
    register_secret(secret)
    webhook = WebhookSettings(
        name=name,
        url=url,
        secret=secret,
        wanted=_filter(reader, mappings),
        max_batch=reader.whole("max_batch", 100, 1, MAX_BATCH_LIMIT),
        max_wait=reader.duration("max_wait", timedelta(seconds=1), zero_ok=True),
        timeout=reader.duration("timeout", timedelta(seconds=10)),
        retry_initial=reader.duration("retry_initial", timedelta(seconds=1)),
        retry_max=reader.duration("retry_max", timedelta(minutes=1)),
        failing_after=reader.duration("failing_after", timedelta(minutes=5)),
        allow_insecure_http=allow_insecure,
    )
    if webhook.retry_max < webhook.retry_initial:
        raise ConfigurationError(f"{label}: invalid retry_max: must be at least retry_initial")
    return webhook


def _secrets_of_webhook_url(url: str) -> list[str]:
    """What of a webhook URL must never be shown: its password, and its path and query
    when long enough to hold a token (``/hooks/T0/B0/xyz``), never its origin."""
    try:
        found = secrets_of_url(url)
        parts = urlsplit(url)
    except ValueError:
        return []  # refused as unreadable right after
    for part in (parts.path, parts.query, f"{parts.path}?{parts.query}"):
        if len(part.strip("/?")) >= _TOKEN_CHARS:
            found.append(part)
    return found


def _filter(reader: _Reader, mappings: Sequence[Settings]) -> DeliveryFilter:
    names = tuple(m.mapping_name for m in mappings)
    chosen = reader.names("mappings")
    for mapping in chosen:
        if mapping not in names:
            known = ", ".join(names)
            reader.fail("mappings", f"no mapping is called {mapping!r} (they are {known})")
    covered = [m for m in mappings if not chosen or m.mapping_name in chosen]
    columns = {f.target for m in covered for f in m.field_mappings}
    fields = reader.names("fields")
    for column in fields:
        if column not in columns:
            reader.fail("fields", f"no mapping it covers writes a field {column!r}")
    sources = reader.names("sources")
    for source in sources:
        if source not in SOURCES:
            reader.fail("sources", f"{source!r} is not one of {', '.join(SOURCES)}")
    return DeliveryFilter(chosen, fields, sources)


class _Reader:
    """Typed reads of one table's keys, each mistake one line naming the webhook and key."""

    def __init__(self, label: str, table: Mapping[str, Any]) -> None:
        self.label = label
        self.table = table

    def fail(self, key: str, reason: str) -> None:
        raise ConfigurationError(f"{self.label}: invalid {key}: {reason}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.table.get(key)
        if value is None or value == "":
            if required:
                self.fail(key, "is required")
            return None
        if not isinstance(value, str):
            self.fail(key, "must be a string")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return bool(value)

    def whole(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, f"must be a whole number from {low} to {high}")
        return int(value)

    def duration(self, key: str, default: timedelta, *, zero_ok: bool = False) -> timedelta:
        raw = self.table.get(key, default)
        try:
            value = parse_duration(raw) if not isinstance(raw, bool) else raw
        except (ValueError, OverflowError):
            value = None
        if not isinstance(value, timedelta):
            self.fail(key, "must be a duration such as 500ms, 10s or 5m")
        assert isinstance(value, timedelta)
        if value < timedelta(0) or (value == timedelta(0) and not zero_ok):
            self.fail(key, "must be a positive duration")
        if value > timedelta(days=1):
            self.fail(key, "must be at most a day")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, "must be a list of names")
        return tuple(dict.fromkeys(value))
