"""Settings from the environment and an optional TOML file (environment wins).

The two database URLs keep the seed's names (``PRODUCTION_DATABASE_URL``,
``SANDBOX_DATABASE_URL``); everything else is ``PROPAGATOR_``-prefixed. A wrong
setting fails at start with one line naming the setting and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from propagator.core.filters import validate_filter
from propagator.core.identifiers import QualifiedName, parse_qualified_name, validate_identifier
from propagator.core.mapping import DEFAULT_KEY_COLUMNS, FieldMapping, MappingSpec
from propagator.core.redact import mask_url, register_secret, secrets_of_url
from propagator.errors import ConfigurationError
from propagator.settings.values import (
    HOST_PATTERN,
    normalize_database_url,
    parse_duration,
    parse_field_mapping,
    split_list,
)

__all__ = ["DEFAULT_MAPPING", "MAPPING_NAME", "Settings", "named_table"]

DEFAULT_MAPPING = "default"
# Every duration setting, by the values it may take (each list read by one validator).
_POSITIVE_DURATIONS = (
    "connect_timeout",
    "sandbox_lock_timeout",
    "debounce_max_delay",
    "heartbeat_interval",
    "heartbeat_timeout",
    "retry_initial",
    "retry_max",
    "permanent_retry_interval",
    "standby_poll_interval",
    "shutdown_timeout",
    "webhook_hold_max",
)
_NON_NEGATIVE_DURATIONS = (
    "statement_timeout",
    "reconcile_interval",
    "debounce_quiet",
    "history_retention",
)
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}", re.ASCII)  # what PostgreSQL accepts for a slot
MAPPING_NAME = re.compile(r"[a-z0-9_]{1,40}", re.ASCII)


class _TomlWithoutMappings(TomlConfigSettingsSource):
    """The TOML file's top-level settings; ``[[mappings]]`` and ``[[webhooks]]`` are resolved
    separately."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        data.pop("mappings", None)
        data.pop("webhooks", None)
        return data


# The file the settings being built read, if any. Set around one construction
# (``load_settings``) rather than on a subclass: building a pydantic subclass per
# load costs a one-shot command ~8 ms of schema generation.
TOML_FILE: ContextVar[Path | None] = ContextVar("propagator_toml_file", default=None)


class Settings(BaseSettings):
    """Every setting, its environment name and its default (see README)."""

    model_config = SettingsConfigDict(
        env_prefix="PROPAGATOR_",
        case_sensitive=False,
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )
    _mapping_name: str = PrivateAttr(default=DEFAULT_MAPPING)

    # Databases (the seed's names, no prefix).
    production_database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("PRODUCTION_DATABASE_URL", "production_database_url"),
    )
    sandbox_database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SANDBOX_DATABASE_URL", "sandbox_database_url"),
    )
    connect_timeout: timedelta = timedelta(seconds=10)
    statement_timeout: timedelta = timedelta(minutes=5)
    # How long a sandbox write waits for a lock someone else holds before the
    # batch is deferred and retried later: sandbox users are never kept waiting.
    sandbox_lock_timeout: timedelta = timedelta(seconds=2)
    pool_size: int = Field(default=4, ge=1, le=100)

    # What to mirror.
    production_table: str = "public.jobs"
    sandbox_table: str = "public.jobs"
    key_columns: Annotated[tuple[str, ...], NoDecode] = DEFAULT_KEY_COLUMNS
    field_mappings: Annotated[tuple[FieldMapping, ...], NoDecode] = (
        FieldMapping("fab_order", "fab_order"),
    )
    production_filter: str | None = None
    # 5000: ~30% more rows/s than 1000 on a 2-core machine (bench/apply_batch_size.py).
    batch_size: int = Field(default=5000, ge=1, le=100_000)

    # Which of the file's [[mappings]] this process serves (empty: all of them).
    selected_mappings: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias=AliasChoices("PROPAGATOR_MAPPINGS", "selected_mappings"),
    )

    # Reconcile.
    reconcile_interval: timedelta = timedelta(minutes=10)
    reconcile_method: Literal["auto", "checksum", "stream"] = "auto"
    # Parallel workers a reconcile query may use on each server (never more than the
    # server allows); 0 keeps a background check to one core of each server.
    reconcile_parallel_workers: int = Field(default=0, ge=0, le=1024)
    report_limit: int = Field(default=10, ge=0)

    # Triggers, listener and debounce.
    channel: str = "propagator_jobs"
    debounce_quiet: timedelta = timedelta(milliseconds=50)
    debounce_max_delay: timedelta = timedelta(milliseconds=500)
    debounce_max_keys: int = Field(default=5000, ge=1)
    buffer_max_keys: int = Field(default=100_000, ge=1)
    heartbeat_interval: timedelta = timedelta(seconds=5)
    heartbeat_timeout: timedelta = timedelta(seconds=15)
    retry_initial: timedelta = timedelta(milliseconds=200)
    retry_max: timedelta = timedelta(seconds=30)
    permanent_retry_interval: timedelta = timedelta(minutes=1)

    # Capture: "notify" (triggers, the default: no restart, no replication privilege)
    # or "logical" (a pgoutput slot: no cost to production writers, durable while down).
    capture: Literal["notify", "logical"] = "notify"
    logical_slot: str = "propagator"
    logical_publication: str = "propagator"

    # Daemon.
    leader_lock_id: int | None = None
    standby_poll_interval: timedelta = timedelta(seconds=1)
    shutdown_timeout: timedelta = timedelta(seconds=10)

    # HTTP endpoint and logs.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9753, ge=0, le=65535)
    http_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    http_max_connections: int = Field(default=256, ge=1, le=10_000)
    http_max_client_connections: int = Field(default=32, ge=1, le=10_000)
    http_read_protection: bool = False
    api_token: SecretStr | None = None
    read_token: SecretStr | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # History.
    history_enabled: bool = True
    history_schema: str = "propagator"
    history_retention: timedelta = timedelta(days=30)
    # History a webhook endpoint has not received is kept past history_retention for
    # at most this long; older rows are pruned and the endpoint is sent a gap notice.
    webhook_hold_max: timedelta = timedelta(days=7)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = TOML_FILE.get()
        if toml_file is not None:
            sources.append(_TomlWithoutMappings(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator(*_POSITIVE_DURATIONS, *_NON_NEGATIVE_DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator(*_POSITIVE_DURATIONS)
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator(*_NON_NEGATIVE_DURATIONS)
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be a negative duration")
        return value

    @field_validator("production_database_url", "sandbox_database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for secret in secrets_of_url(raw):
            register_secret(secret)
        return normalize_database_url(raw)

    @field_validator("key_columns", mode="before")
    @classmethod
    def _key_columns(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                raise ValueError("at least one key column is required")
            return tuple(validate_identifier(str(v), what="key column") for v in value)
        return value

    @field_validator("field_mappings", mode="before")
    @classmethod
    def _field_mappings(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                raise ValueError("at least one field mapping is required")
            return tuple(parse_field_mapping(item) for item in value)
        return value

    @field_validator("production_table", "sandbox_table")
    @classmethod
    def _table(cls, value: str) -> str:
        parse_qualified_name(value)
        return value

    @field_validator("channel", "history_schema", "logical_publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value, what="name")

    @field_validator("logical_slot")
    @classmethod
    def _slot(cls, value: str) -> str:
        if not _SLOT_NAME.fullmatch(value):
            raise ValueError("a replication slot name is 1-63 lowercase letters, digits or _")
        return value

    @field_validator("production_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return None if value is None else validate_filter(value)

    @field_validator("selected_mappings", mode="before")
    @classmethod
    def _selected(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            return tuple(dict.fromkeys(str(v).strip() for v in value))
        return value

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            hosts = tuple(str(v).strip().lower() for v in value)
            for host in hosts:
                if not HOST_PATTERN.fullmatch(host):
                    raise ValueError(f"{host!r} is not a host name, .domain, address or *")
            return hosts
        return value

    @field_validator("api_token", "read_token", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if isinstance(value, str):
            register_secret(value)
            return value or None
        return value

    # Derived values the rest of the program uses.
    @property
    def mapping_name(self) -> str:
        """The name of the mapping these settings describe (``default`` without [[mappings]])."""
        return self._mapping_name

    def named(self, name: str) -> Settings:
        """These settings as the mapping called ``name``."""
        copy = self.model_copy()
        copy._mapping_name = name
        return copy

    @property
    def production_table_name(self) -> QualifiedName:
        return parse_qualified_name(self.production_table)

    @property
    def sandbox_table_name(self) -> QualifiedName:
        return parse_qualified_name(self.sandbox_table)

    @property
    def mapping_spec(self) -> MappingSpec:
        return MappingSpec(self.key_columns, self.field_mappings)

    def production_url(self) -> str:
        return _require_url(self.production_database_url, "PRODUCTION_DATABASE_URL")

    def sandbox_url(self) -> str:
        return _require_url(self.sandbox_database_url, "SANDBOX_DATABASE_URL")

    def describe(self) -> dict[str, Any]:
        """Settings as shown to people: URLs masked, secrets omitted."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("database_url"):
                value = mask_url(value.get_secret_value()) if value else None
            elif isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, timedelta):
                value = value.total_seconds()
            elif name == "field_mappings":
                value = [m.describe() for m in value]
            shown[name] = value
        return shown


def named_table(
    kind: str, table: Mapping[str, Any], number: int, keys: Sequence[str]
) -> tuple[str, str]:
    """The name of the file's ``number``-th ``[[kind]]`` table and the label its errors carry.

    A missing or malformed name, or a key the table does not take, is one line naming it.
    """
    name = table.get("name")
    label = f"{kind} {name!r}" if isinstance(name, str) else f"{kind} #{number + 1}"
    if not isinstance(name, str) or not MAPPING_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{label}: 'name' is required: 1-40 lowercase letters, digits and _"
        )
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigurationError(
            f"{label}: unknown key {unknown[0]!r} (a {kind} takes {', '.join(keys)})"
        )
    return name, label


def _require_url(value: SecretStr | None, name: str) -> str:
    if value is None:
        raise ConfigurationError(f"{name} is not set (a postgresql:// URL is required)")
    return value.get_secret_value()
