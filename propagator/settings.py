"""Settings from the environment and an optional TOML file (environment wins).

The two database URLs keep the seed's names (``PRODUCTION_DATABASE_URL``,
``SANDBOX_DATABASE_URL``); everything else is ``PROPAGATOR_``-prefixed. A wrong
setting fails at start with one line naming the setting and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
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

__all__ = [
    "Settings",
    "env_name",
    "load_settings",
    "normalize_database_url",
    "parse_duration",
    "parse_field_mapping",
]

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$", re.ASCII)
_HOST_PATTERN = re.compile(r"\*|\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[?[0-9a-f:.]+\]?", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ACCEPTED_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}


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


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


Duration = Annotated[timedelta, Field()]


class Settings(BaseSettings):
    """Every setting, its environment name and its default (see README)."""

    model_config = SettingsConfigDict(
        env_prefix="PROPAGATOR_",
        case_sensitive=False,
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )
    toml_file: ClassVar[Path | None] = None

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

    # Reconcile.
    reconcile_interval: timedelta = timedelta(minutes=10)
    reconcile_method: Literal["auto", "checksum", "stream"] = "auto"
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
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)

    @field_validator(
        "connect_timeout",
        "statement_timeout",
        "reconcile_interval",
        "debounce_quiet",
        "debounce_max_delay",
        "heartbeat_interval",
        "heartbeat_timeout",
        "retry_initial",
        "retry_max",
        "permanent_retry_interval",
        "standby_poll_interval",
        "shutdown_timeout",
        "history_retention",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator(
        "connect_timeout",
        "debounce_max_delay",
        "heartbeat_interval",
        "heartbeat_timeout",
        "retry_initial",
        "retry_max",
        "permanent_retry_interval",
        "standby_poll_interval",
        "shutdown_timeout",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator(
        "statement_timeout", "reconcile_interval", "debounce_quiet", "history_retention"
    )
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
        value = _split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                raise ValueError("at least one key column is required")
            return tuple(validate_identifier(str(v), what="key column") for v in value)
        return value

    @field_validator("field_mappings", mode="before")
    @classmethod
    def _field_mappings(cls, value: Any) -> Any:
        value = _split_list(value)
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

    @field_validator("channel", "history_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value, what="name")

    @field_validator("production_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return None if value is None else validate_filter(value)

    @field_validator("http_allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, Sequence) and not isinstance(value, str):
            hosts = tuple(str(v).strip().lower() for v in value)
            for host in hosts:
                if not _HOST_PATTERN.fullmatch(host):
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


def _require_url(value: SecretStr | None, name: str) -> str:
    if value is None:
        raise ConfigurationError(f"{name} is not set (a postgresql:// URL is required)")
    return value.get_secret_value()


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    if field in ("production_database_url", "sandbox_database_url"):
        return field.upper()
    return "PROPAGATOR_" + field.upper()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning any validation failure into one ``ConfigurationError`` line."""
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"config file {config_file} does not exist")

    class _FromFile(Settings):
        toml_file = config_file

    try:
        settings = _FromFile(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        location = [str(part) for part in first["loc"]]
        field = location[0] if location else "settings"
        field = {"PRODUCTION_DATABASE_URL": "production_database_url"}.get(field, field)
        field = {"SANDBOX_DATABASE_URL": "sandbox_database_url"}.get(field, field)
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            raise ConfigurationError(f"unknown setting {field!r} in {config_file}") from None
        raise ConfigurationError(f"invalid setting {env_name(field)}: {reason}") from None
    except ValueError as error:  # only TOML syntax is left: pydantic errors are caught above
        raise ConfigurationError(f"config file {config_file} is not valid TOML: {error}") from None
    try:
        MappingSpec(settings.key_columns, settings.field_mappings)
    except ValueError as error:  # rules across both settings name both variables
        names = f"{env_name('key_columns')}/{env_name('field_mappings')}"
        raise ConfigurationError(f"invalid setting {names}: {error}") from None
    if settings.http_read_protection and not (settings.read_token or settings.api_token):
        raise ConfigurationError(
            f"invalid setting {env_name('http_read_protection')}: needs "
            f"{env_name('read_token')} or {env_name('api_token')}"
        )
    return settings
