"""Settings from the environment and a TOML file: defaults, precedence, parsing, errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import propagator.core.redact as redact_module
from propagator.core.mapping import FieldMapping
from propagator.core.transforms import TRANSFORMS
from propagator.errors import ConfigurationError, ExitCode
from propagator.settings import (
    Settings,
    env_name,
    load_settings,
    normalize_database_url,
    parse_duration,
    parse_field_mapping,
)
from tests.helpers import forget_settings_environment

DURATION_FIELDS = [
    name for name, info in Settings.model_fields.items() if info.annotation is timedelta
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the machine, and no registered secret leaks out."""
    forget_settings_environment(monkeypatch)
    monkeypatch.setattr(redact_module, "_secrets", set())


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "propagator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def configuration_error(**env: str) -> str:
    """The one-line message load_settings gives for these environment variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigurationError) as caught:
            load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == ExitCode.USAGE
    return message


# --- defaults and precedence ----------------------------------------------------------------


def test_defaults() -> None:
    """With nothing configured, settings describe the seed's fab_order mirror."""
    settings = load_settings()
    assert settings.production_database_url is None
    assert settings.sandbox_database_url is None
    assert settings.production_table == settings.sandbox_table == "public.jobs"
    assert settings.key_columns == ("job", "release")
    assert settings.field_mappings == (FieldMapping("fab_order", "fab_order"),)
    assert settings.batch_size == 5000
    assert settings.channel == "propagator_jobs"
    assert settings.debounce_quiet == timedelta(milliseconds=50)
    assert settings.debounce_max_delay == timedelta(milliseconds=500)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 9753)
    assert settings.reconcile_method == "auto"
    assert settings.reconcile_parallel_workers == 0
    assert settings.log_format == "auto"
    assert settings.history_enabled is True
    spec = settings.mapping_spec
    assert spec.key_columns == ("job", "release")
    assert settings.production_table_name.parts() == ("public", "jobs")


def test_missing_database_url_is_a_configuration_error_naming_it() -> None:
    """Asking for an unset database URL fails with its environment name."""
    settings = load_settings()
    with pytest.raises(ConfigurationError, match="PRODUCTION_DATABASE_URL is not set"):
        settings.production_url()
    with pytest.raises(ConfigurationError, match="SANDBOX_DATABASE_URL is not set"):
        settings.sandbox_url()


def test_environment_overrides_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A value in the environment wins over the same value in the config file."""
    config = write_toml(tmp_path, 'batch_size = 5\nchannel = "from_file"\n')
    monkeypatch.setenv("PROPAGATOR_BATCH_SIZE", "7")
    settings = load_settings(config)
    assert settings.batch_size == 7
    assert settings.channel == "from_file"


def test_toml_sets_every_kind_of_value(tmp_path: Path) -> None:
    """The config file sets URLs, tables, keys, mapping tables, durations and numbers."""
    config = write_toml(
        tmp_path,
        """
production_database_url = "postgres://app:pw@prod.example/jobs?sslmode=require"
sandbox_table = '"Sandbox"."Jobs"'
key_columns = ["job", "release"]
debounce_quiet = "250ms"
retry_max = "2m"
heartbeat_interval = 3
http_port = 0

[[field_mappings]]
source = "fab_order"
transform = "float"

[[field_mappings]]
source = "paint_color"
target = "color"
""",
    )
    settings = load_settings(config)
    assert settings.production_url() == "postgresql://app:pw@prod.example/jobs?sslmode=require"
    assert settings.sandbox_table_name.parts() == ("Sandbox", "Jobs")
    assert settings.debounce_quiet == timedelta(milliseconds=250)
    assert settings.retry_max == timedelta(minutes=2)
    assert settings.heartbeat_interval == timedelta(seconds=3)
    assert settings.http_port == 0
    first, second = settings.field_mappings
    assert (first.source, first.target, first.transform_name) == ("fab_order", "fab_order", "float")
    assert (second.source, second.target, second.transform) == ("paint_color", "color", None)


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides (command-line options) win over the environment."""
    monkeypatch.setenv("PROPAGATOR_BATCH_SIZE", "7")
    assert load_settings(batch_size=9).batch_size == 9


# --- database URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:pw@h/db?sslmode=require", "postgresql://u:pw@h/db?sslmode=require"),
        ("postgresql://u@h:5433/db", "postgresql://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql://u@h/db"),
        ("postgresql+psycopg2://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem",
         "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem"),
        ("  postgres://h/db  ", "postgresql://h/db"),
        ("POSTGRES://h/db", "postgresql://h/db"),
        ("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"),
    ],
)  # fmt: skip
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    """postgres:// and driver URLs become postgresql://, query options kept."""
    assert normalize_database_url(given) == expected


def test_urls_from_environment_are_normalised_and_their_passwords_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The seed's URL variables are read, normalised, and their passwords masked everywhere."""
    monkeypatch.setenv(
        "PRODUCTION_DATABASE_URL", "postgres://app:Pr0d-Secret@prod/jobs?sslmode=require"
    )
    monkeypatch.setenv("SANDBOX_DATABASE_URL", "postgresql://app@sand/jobs?password=Sand-Secret")
    settings = load_settings()
    assert settings.production_url() == "postgresql://app:Pr0d-Secret@prod/jobs?sslmode=require"
    shown = settings.describe()
    assert shown["production_database_url"] == "postgresql://app:***@prod/jobs?sslmode=require"
    assert shown["sandbox_database_url"] == "postgresql://app@sand/jobs?password=***"
    for password in ("Pr0d-Secret", "Sand-Secret"):
        assert password not in repr(settings)
        assert password not in str(ConfigurationError(f"failed with {password}"))


def test_empty_database_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty URL variable is the same as an unset one."""
    monkeypatch.setenv("PRODUCTION_DATABASE_URL", "")
    assert load_settings().production_database_url is None


def test_describe_hides_the_api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP API and read tokens never appear in the shown settings, and are masked in text."""
    monkeypatch.setenv("PROPAGATOR_API_TOKEN", "tok-9f8e7d")
    monkeypatch.setenv("PROPAGATOR_READ_TOKEN", "read-1c2b3a")
    settings = load_settings()
    assert settings.describe()["api_token"] == "***"
    assert settings.describe()["read_token"] == "***"
    assert "tok-9f8e7d" not in str(ConfigurationError("bad token tok-9f8e7d"))
    assert "read-1c2b3a" not in str(ConfigurationError("bad token read-1c2b3a"))


def test_read_protection_with_either_token_and_allowed_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read protection starts with the read or the API token; host names are a list."""
    monkeypatch.setenv("PROPAGATOR_HTTP_READ_PROTECTION", "true")
    monkeypatch.setenv("PROPAGATOR_API_TOKEN", "tok-only-api")
    monkeypatch.setenv("PROPAGATOR_HTTP_ALLOWED_HOSTS", "Propagator, .svc.cluster.local,*")
    settings = load_settings()
    assert settings.http_read_protection is True
    assert settings.http_allowed_hosts == ("propagator", ".svc.cluster.local", "*")


# --- field mappings and keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "source", "target", "transform"),
    [
        ("fab_order", "fab_order", "fab_order", None),
        ("a->b", "a", "b", None),
        (" a -> b ", "a", "b", None),
        ("a->b:float", "a", "b", "float"),
        ("a -> b : decimal", "a", "b", "decimal"),
        ("fab_order:float", "fab_order", "fab_order", "float"),
        ({"source": "a", "target": "b", "transform": "upper"}, "a", "b", "upper"),
        ({"source": "a"}, "a", "a", None),
    ],
)
def test_parse_field_mapping(text: Any, source: str, target: str, transform: str | None) -> None:
    """Every configuration form of a field mapping parses to source, target, transform."""
    mapping = parse_field_mapping(text)
    assert (mapping.source, mapping.target, mapping.transform_name) == (source, target, transform)


@pytest.mark.parametrize(
    ("value", "described"),
    [
        ("fab_order", ["fab_order -> fab_order"]),
        ("fab_order->fab_order:float, paint_color->color",
         ["fab_order -> fab_order (float)", "paint_color -> color"]),
        ('["fab_order->fab_order:float", {"source": "stage", "target": "phase"}]',
         ["fab_order -> fab_order (float)", "stage -> phase"]),
    ],
)  # fmt: skip
def test_field_mappings_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, described: list[str]
) -> None:
    """PROPAGATOR_FIELD_MAPPINGS takes a comma list or a JSON list of strings and tables."""
    monkeypatch.setenv("PROPAGATOR_FIELD_MAPPINGS", value)
    assert [m.describe() for m in load_settings().field_mappings] == described


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("job", ("job",)),
        ("job, release, site", ("job", "release", "site")),
        ('["a","b"]', ("a", "b")),
    ],
)  # fmt: skip
def test_key_columns_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]
) -> None:
    """PROPAGATOR_KEY_COLUMNS takes a comma list or a JSON list."""
    monkeypatch.setenv("PROPAGATOR_KEY_COLUMNS", value)
    assert load_settings().key_columns == expected


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("5s", timedelta(seconds=5)),
        ("2m", timedelta(minutes=2)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 10 s ", timedelta(seconds=10)),
        ("3", timedelta(seconds=3)),
        ("0.25", timedelta(milliseconds=250)),
        (4, timedelta(seconds=4)),
        (0.5, timedelta(milliseconds=500)),
    ],
)
def test_parse_duration(text: Any, expected: timedelta) -> None:
    """Durations accept unit suffixes and plain seconds."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_every_duration_setting_accepts_unit_suffixes(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """Each duration setting reads "250ms", "2m" and plain seconds from its variable."""
    for text, expected in (("250ms", 0.25), ("2m", 120.0), ("3", 3.0)):
        monkeypatch.setenv(env_name(field), text)
        assert getattr(load_settings(), field).total_seconds() == expected


@pytest.mark.parametrize("field", DURATION_FIELDS)
def test_negative_durations_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str
) -> None:
    """No duration setting may be negative, whether from the file or the environment."""
    config = write_toml(tmp_path, f"{field} = -5\n")
    with pytest.raises(ConfigurationError, match=f"{env_name(field)}: .*(positive|negative)"):
        load_settings(config)
    monkeypatch.setenv(env_name(field), "-PT5S")
    with pytest.raises(ConfigurationError, match=f"{env_name(field)}: .*(positive|negative)"):
        load_settings()


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("PROPAGATOR_BATCH_SIZE", "lots", "valid integer"),
        ("PROPAGATOR_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("PROPAGATOR_POOL_SIZE", "101", "less than or equal to 100"),
        ("PROPAGATOR_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("PROPAGATOR_DEBOUNCE_QUIET", "fast", "timedelta"),
        ("PROPAGATOR_DEBOUNCE_MAX_DELAY", "0", "positive duration"),
        ("PROPAGATOR_HEARTBEAT_INTERVAL", "0s", "positive duration"),
        ("PROPAGATOR_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("PROPAGATOR_LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
        ("PROPAGATOR_RECONCILE_METHOD", "magic", "'auto', 'checksum' or 'stream'"),
        ("PROPAGATOR_RECONCILE_PARALLEL_WORKERS", "-1", "greater than or equal to 0"),
        ("PROPAGATOR_HISTORY_ENABLED", "maybe", "valid boolean"),
        ("PROPAGATOR_LEADER_LOCK_ID", "abc", "valid integer"),
        ("PROPAGATOR_CHANNEL", "", "must not be empty"),
        ("PROPAGATOR_CHANNEL", "c" * 64, "63-byte"),
        ("PROPAGATOR_PRODUCTION_TABLE", '"unterminated', "unterminated quote"),
        ("PROPAGATOR_SANDBOX_TABLE", "a.b.c", "more than two parts"),
        ("PROPAGATOR_PRODUCTION_FILTER", "true; drop table jobs", "no ';'"),
        ("PROPAGATOR_FIELD_MAPPINGS", "a->b->c", "more than one '->'"),
        ("PROPAGATOR_FIELD_MAPPINGS", "[not json", "Expecting value"),
        ("PROPAGATOR_FIELD_MAPPINGS", '[{"src": "a"}]', "needs 'source'"),
        ("PROPAGATOR_FIELD_MAPPINGS", "a->", "must not be empty"),
        ("PROPAGATOR_FIELD_MAPPINGS", "", "at least one field mapping"),
        ("PROPAGATOR_FIELD_MAPPINGS", "a->x, b->x", "same target column"),
        ("PROPAGATOR_KEY_COLUMNS", "", "at least one key column"),
        ("PROPAGATOR_KEY_COLUMNS", "job,job", "distinct"),
        ("PROPAGATOR_KEY_COLUMNS", "job,fab_order", "cannot also be a mapping target"),
        ("PRODUCTION_DATABASE_URL", "mysql://u@h/db", "not scheme mysql"),
        ("SANDBOX_DATABASE_URL", "postgresql:///db", "has no host"),
        ("SANDBOX_DATABASE_URL", "just-a-host", "not scheme (none)"),
        ("PROPAGATOR_HTTP_ALLOWED_HOSTS", "ok.example, evil host", "not a host name"),
        ("PROPAGATOR_HTTP_MAX_CONNECTIONS", "0", "greater than or equal to 1"),
        ("PROPAGATOR_HTTP_MAX_CLIENT_CONNECTIONS", "lots", "valid integer"),
        ("PROPAGATOR_HTTP_READ_PROTECTION", "true", "needs PROPAGATOR_READ_TOKEN"),
        ("PROPAGATOR_HISTORY_RETENTION", "9" * 400 + "d", "too long"),
    ],
)
def test_bad_setting_names_its_variable(variable: str, value: str, reason: str) -> None:
    """Every bad setting fails with one line naming its environment variable and why."""
    message = configuration_error(**{variable: value})
    assert variable in message
    assert reason in message


def test_bad_transform_lists_the_valid_names() -> None:
    """An unknown transform names the variable and lists every valid transform."""
    message = configuration_error(PROPAGATOR_FIELD_MAPPINGS="fab_order->fab_order:money")
    assert "PROPAGATOR_FIELD_MAPPINGS" in message
    assert "unknown transform 'money'" in message
    for name in TRANSFORMS:
        assert name in message


def test_bad_url_error_never_shows_the_password() -> None:
    """A refused database URL is reported without its password."""
    message = configuration_error(PRODUCTION_DATABASE_URL="mysql://app:Hush-Hush-1@h/db")
    assert "PRODUCTION_DATABASE_URL" in message
    assert "Hush-Hush-1" not in message


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    """A misspelt key in the config file is named, with the file."""
    config = write_toml(tmp_path, "batch_size = 5\nbach_size = 6\n")
    with pytest.raises(ConfigurationError, match="unknown setting 'bach_size'") as caught:
        load_settings(config)
    assert str(config) in str(caught.value)


def test_bad_toml_value_names_the_setting(tmp_path: Path) -> None:
    """A bad value in the config file names the setting it is for."""
    config = write_toml(tmp_path, 'batch_size = "many"\n')
    with pytest.raises(ConfigurationError, match="PROPAGATOR_BATCH_SIZE"):
        load_settings(config)


def test_bad_toml_mapping_table_names_the_setting(tmp_path: Path) -> None:
    """A field mapping table with a wrong transform names the setting and the valid names."""
    config = write_toml(tmp_path, '[[field_mappings]]\nsource = "a"\ntransform = "nope"\n')
    with pytest.raises(
        ConfigurationError, match=r"PROPAGATOR_FIELD_MAPPINGS.*valid: blank_to_null"
    ):
        load_settings(config)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A config file that is not TOML is reported with its path, in one line."""
    config = write_toml(tmp_path, "batch_size = \n")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert str(config) in message
    assert "TOML" in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist is a configuration error naming it."""
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigurationError, match=f"config file {missing} does not exist"):
        load_settings(missing)


def test_unrelated_prefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables that merely share the prefix (test harness URLs) are not settings errors."""
    monkeypatch.setenv("PROPAGATOR_TEST_PRODUCTION_URL", "postgresql://h/db")
    assert load_settings().batch_size == 5000


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("production_database_url", "PRODUCTION_DATABASE_URL"),
        ("sandbox_database_url", "SANDBOX_DATABASE_URL"),
        ("batch_size", "PROPAGATOR_BATCH_SIZE"),
        ("http_port", "PROPAGATOR_HTTP_PORT"),
    ],
)
def test_env_name(field: str, variable: str) -> None:
    """The seed's URL names have no prefix; everything else is PROPAGATOR_<FIELD>."""
    assert env_name(field) == variable


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_read_from_its_variable(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """Each declared setting is reachable through the variable env_name() documents."""
    samples: dict[type[Any] | Any, str] = {int: "3", timedelta: "3s", bool: "false"}
    special = {
        "production_database_url": "postgresql://h/db",
        "sandbox_database_url": "postgresql://h/db",
        "key_columns": "job",
        "field_mappings": "paint_color",
        "production_table": "other.jobs",
        "sandbox_table": "other.jobs",
        "production_filter": "stage = 'open'",
        "reconcile_method": "stream",
        "log_format": "json",
        "log_level": "debug",
        "api_token": "tok-abc123",
        "read_token": "tok-read-456",
        "http_allowed_hosts": "propagator.example",
        "http_read_protection": "true",
        "leader_lock_id": "42",
        "http_host": "::1",
        "channel": "other_channel",
        "history_schema": "other_schema",
        "selected_mappings": "default",
        "capture": "logical",
        "logical_slot": "other_slot",
        "logical_publication": "other_publication",
    }
    annotation = Settings.model_fields[field].annotation
    value = special.get(field) or samples[annotation]
    default = load_settings().describe()[field]
    monkeypatch.setenv(env_name(field), value)
    if field == "http_read_protection":  # it needs a token to be accepted at all
        monkeypatch.setenv(env_name("read_token"), "tok-read-456")
    assert load_settings().describe()[field] != default


def test_every_duration_setting_is_parsed_and_bounded() -> None:
    """A new timedelta setting must join one of the two duration lists (parsed, bounded)."""
    from propagator.settings import model

    durations = {
        name for name, field in Settings.model_fields.items() if field.annotation is timedelta
    }
    listed = [*model._POSITIVE_DURATIONS, *model._NON_NEGATIVE_DURATIONS]
    assert sorted(listed) == sorted(durations)
