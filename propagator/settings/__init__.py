"""Settings from the environment and an optional TOML file (environment wins).

The two database URLs keep the seed's names (``PRODUCTION_DATABASE_URL``,
``SANDBOX_DATABASE_URL``); everything else is ``PROPAGATOR_``-prefixed. A wrong
setting fails at start with one line naming the setting and why. The file's
``[[mappings]]`` name several mappings, each resolved to its own ``Settings``.
"""

from propagator.settings.loading import env_name, load_configuration, load_settings
from propagator.settings.mappings import (
    MAPPING_KEYS,
    Configuration,
    WatchedTable,
    channel_for,
    watched_tables,
)
from propagator.settings.model import DEFAULT_MAPPING, Settings
from propagator.settings.values import (
    normalize_database_url,
    parse_duration,
    parse_field_mapping,
)

__all__ = [
    "DEFAULT_MAPPING",
    "MAPPING_KEYS",
    "Configuration",
    "Settings",
    "WatchedTable",
    "channel_for",
    "env_name",
    "load_configuration",
    "load_settings",
    "normalize_database_url",
    "parse_duration",
    "parse_field_mapping",
    "watched_tables",
]
