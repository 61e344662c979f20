"""Loading settings: environment first, then the TOML file; one line per mistake."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from propagator.core.mapping import MappingSpec
from propagator.errors import ConfigurationError
from propagator.settings.mappings import Configuration, read_mapping_tables, resolve_mappings
from propagator.settings.model import TOML_FILE, Settings
from propagator.settings.webhooks import read_webhook_tables, resolve_webhooks

__all__ = ["env_name", "load_configuration", "load_settings"]


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    if field in ("production_database_url", "sandbox_database_url"):
        return field.upper()
    if field == "selected_mappings":
        return "PROPAGATOR_MAPPINGS"
    return "PROPAGATOR_" + field.upper()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning any validation failure into one ``ConfigurationError`` line."""
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"config file {config_file} does not exist")

    reading = TOML_FILE.set(config_file)
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        location = [str(part) for part in first["loc"]]
        field = location[0] if location else "settings"
        field = {"PRODUCTION_DATABASE_URL": "production_database_url"}.get(field, field)
        field = {"SANDBOX_DATABASE_URL": "sandbox_database_url"}.get(field, field)
        field = {"PROPAGATOR_MAPPINGS": "selected_mappings"}.get(field, field)
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            raise ConfigurationError(f"unknown setting {field!r} in {config_file}") from None
        raise ConfigurationError(f"invalid setting {env_name(field)}: {reason}") from None
    except ValueError as error:  # only TOML syntax is left: pydantic errors are caught above
        raise ConfigurationError(f"config file {config_file} is not valid TOML: {error}") from None
    finally:
        TOML_FILE.reset(reading)
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


def load_configuration(
    config_file: Path | None = None, *, selection: Sequence[str] = (), **overrides: Any
) -> Configuration:
    """The settings, the selected mappings (``selection``, else ``PROPAGATOR_MAPPINGS``) and
    the webhooks (checked against every mapping the file defines)."""
    settings = load_settings(config_file, **overrides)
    tables = read_mapping_tables(config_file)
    configuration = resolve_mappings(settings, tables, selection)
    every = configuration.mappings
    if len(every) != len(configuration.defined):  # a selection: check against them all
        every = resolve_mappings(settings, tables).mappings
    webhooks = resolve_webhooks(read_webhook_tables(config_file), every)
    return dataclasses.replace(configuration, webhooks=webhooks)
