"""[[webhooks]] in the TOML file: resolution, secrets, masking and one-line errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from propagator.core.outbox import DeliveryFilter
from propagator.core.redact import redact
from propagator.errors import ConfigurationError, ExitCode
from propagator.settings import Settings, load_configuration, load_settings
from propagator.settings.webhooks import WebhookSettings, resolve_webhooks
from tests.helpers import forget_settings_environment

URL = "https://planning.example.internal/hooks/t0ken-in-the-path?key=q-token"
SECRET = "file-secret-0123456789"
ENV_SECRET = "environment-secret-0123456789"
SECRET_VARIABLE = "PROPAGATOR_WEBHOOK_PLANNING_SECRET"

THREE_MAPPINGS = """
[[mappings]]
name = "jobs"

[[mappings]]
name = "orders"
production_table = "public.orders"
sandbox_table = "public.orders"
key_columns = ["id"]
field_mappings = ["status", "total->amount"]

[[mappings]]
name = "jobs_qa"
sandbox_database_url = "postgresql://user:pw-qa-1@qa.example/app"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting or webhook secret leaks in from the machine."""
    forget_settings_environment(monkeypatch)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "propagator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def default_mapping(**overrides: Any) -> list[Settings]:
    return [load_settings(**overrides).named("default")]


def planning(**keys: Any) -> dict[str, Any]:
    """The ``planning`` table of the documentation, with some keys changed (None drops one)."""
    table = {"name": "planning", "url": URL, **keys}
    return {key: value for key, value in table.items() if value is not None}


def resolve_one(
    table: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> WebhookSettings:
    (webhook,) = resolve_webhooks(
        [table], default_mapping(), environ={} if environ is None else environ
    )
    return webhook


def error_of(
    tables: Sequence[Mapping[str, Any]],
    mappings: Sequence[Settings] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The one-line message resolving these tables fails with."""
    with pytest.raises(ConfigurationError) as caught:
        resolve_webhooks(tables, mappings or default_mapping(), environ=environ or {})
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == ExitCode.USAGE
    return message


# --- resolution -------------------------------------------------------------------------------


def test_a_table_with_only_name_and_url_takes_the_documented_defaults() -> None:
    """Left out, every key has its documented default and the endpoint wants everything."""
    webhook = resolve_one(planning())
    assert (webhook.name, webhook.url, webhook.secret) == ("planning", URL, None)
    assert webhook.wanted == DeliveryFilter()
    assert webhook.max_batch == 100
    assert webhook.max_wait == timedelta(seconds=1)
    assert webhook.timeout == timedelta(seconds=10)
    assert (webhook.retry_initial, webhook.retry_max) == (
        timedelta(seconds=1),
        timedelta(minutes=1),
    )
    assert webhook.failing_after == timedelta(minutes=5)
    assert webhook.allow_insecure_http is False
    assert webhook.origin == "https://planning.example.internal"


def test_every_key_is_read() -> None:
    """Filters, batching, timing and the http switch all come from the table."""
    webhook = resolve_one(
        planning(
            url="http://planning.example.internal/hooks",
            secret=SECRET,
            fields=["fab_order"],
            sources=["event", "reconcile"],
            max_batch=10_000,
            max_wait=0,
            timeout="500ms",
            retry_initial="2s",
            retry_max="1h",
            failing_after="1d",
            allow_insecure_http=True,
        )
    )
    assert webhook.secret == SECRET
    assert webhook.wanted == DeliveryFilter((), ("fab_order",), ("event", "reconcile"))
    assert (webhook.max_batch, webhook.max_wait) == (10_000, timedelta(0))
    assert webhook.timeout == timedelta(milliseconds=500)
    assert (webhook.retry_initial, webhook.retry_max) == (timedelta(seconds=2), timedelta(hours=1))
    assert webhook.failing_after == timedelta(days=1)
    assert webhook.allow_insecure_http is True


def test_filters_are_checked_against_the_mappings_they_cover(tmp_path: Path) -> None:
    """A field counts only when a mapping the endpoint covers writes it."""
    mappings = load_configuration(write(tmp_path, THREE_MAPPINGS)).mappings
    table = planning(mappings=["orders", "orders"], fields=["amount"])
    (webhook,) = resolve_webhooks([table], mappings, environ={})
    assert webhook.wanted == DeliveryFilter(("orders",), ("amount",), ())
    assert webhook.covers("orders")
    assert not webhook.covers("jobs")
    message = error_of([planning(mappings=["orders"], fields=["fab_order"])], mappings)
    assert message.startswith("webhook 'planning': invalid fields: ")
    assert "'fab_order'" in message


# --- one-line errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"url": None}, "invalid url: is required"),
        ({"url": "ftp://planning.example.internal/in"}, "invalid url: "),
        ({"url": "https://169.254.169.254/latest/meta-data"}, "invalid url: "),
        ({"url": "https://[fe80::1]/hooks"}, "invalid url: "),
        ({"url": "http://planning.example.internal/in"}, "invalid url: "),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"max_batch": 0}, "invalid max_batch: "),
        ({"max_batch": 10_001}, "invalid max_batch: "),
        ({"max_batch": True}, "invalid max_batch: "),
        ({"max_batch": "100"}, "invalid max_batch: "),
        ({"max_wait": "soon"}, "invalid max_wait: "),
        ({"timeout": "0s"}, "invalid timeout: "),
        ({"timeout": True}, "invalid timeout: "),
        ({"retry_initial": "2d"}, "invalid retry_initial: "),
        ({"failing_after": -5}, "invalid failing_after: "),
        ({"retry_initial": "2s", "retry_max": "1s"}, "invalid retry_max: "),
        ({"mappings": ["nope"]}, "invalid mappings: no mapping is called 'nope'"),
        ({"fields": ["fab_ordr"]}, "invalid fields: "),
        ({"fields": [""]}, "invalid fields: "),
        ({"sources": ["cron"]}, "invalid sources: "),
        ({"secret": "too-short"}, "invalid secret: "),
        ({"secret": 1234567890123456789}, "invalid secret: "),
        ({"allow_insecure_http": "yes"}, "invalid allow_insecure_http: "),
    ],
)
def test_each_mistake_is_one_line_naming_the_webhook_and_the_key(
    keys: dict[str, Any], named: str
) -> None:
    """A wrong table stops the start with one line: ``webhook '<name>': <what about which key>``."""
    message = error_of([planning(**keys)])
    assert message.startswith(f"webhook 'planning': {named}")


def test_the_metadata_refusal_says_why() -> None:
    """A metadata address is refused as such, with the origin but not the path."""
    message = error_of([planning(url="https://169.254.169.254/latest/meta-data")])
    assert message == (
        "webhook 'planning': invalid url: https://169.254.169.254 is refused: "
        "169.254.169.254 is a cloud metadata address"
    )


def test_a_name_used_twice_is_refused() -> None:
    """Two endpoints cannot share a name: it names their cursor, metrics and secret."""
    message = error_of([planning(), planning(url="https://audit.example.com/in")])
    assert message == "webhook 'planning': the name is used twice"


@pytest.mark.parametrize(
    ("tables", "start"),
    [
        ([{"url": URL}], "webhook #1: 'name' is required"),
        ([planning(), {"name": "Planning", "url": URL}], "webhook 'Planning': 'name' is required"),
        ([{"name": "x" * 41, "url": URL}], f"webhook '{'x' * 41}': 'name' is required"),
    ],
)
def test_a_missing_or_malformed_name_is_refused(tables: list[dict[str, Any]], start: str) -> None:
    """A name is required: 1-40 lowercase letters, digits and _ (a missing one counts tables)."""
    assert error_of(tables).startswith(start)


def test_webhooks_need_the_history() -> None:
    """With the history disabled there is nothing to send from: the first webhook says so."""
    message = error_of([planning()], default_mapping(history_enabled=False))
    assert message.startswith("webhook 'planning': ")
    assert "PROPAGATOR_HISTORY_ENABLED=false" in message


def test_a_short_secret_from_the_environment_names_the_variable() -> None:
    """The secret's two sources are both named, since either may have supplied it."""
    message = error_of([planning()], environ={SECRET_VARIABLE: "short"})
    assert message == (
        "webhook 'planning': invalid secret: at least 16 characters are needed "
        "(from 'secret' or PROPAGATOR_WEBHOOK_PLANNING_SECRET)"
    )


def test_a_refused_url_without_a_path_is_shown_in_the_error() -> None:
    """The documented line shows the refused origin, as there is no path to hide."""
    message = error_of([planning(url="http://planning.example.internal")])
    assert message == (
        "webhook 'planning': invalid url: http://planning.example.internal must use https:// "
        "(plain http is allowed only to a loopback address, or with allow_insecure_http = true)"
    )


@pytest.mark.parametrize("url", ["https://planning.example.internal:99999/in", "https://[::1/in"])
def test_an_unparsable_url_is_a_configuration_error(url: str) -> None:
    """A port out of range or a broken IPv6 literal is one line naming ``url``, not a crash."""
    assert error_of([planning(url=url)]).startswith("webhook 'planning': invalid url: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**15, "9999999999999d"])
def test_an_absurd_duration_is_a_configuration_error(value: Any) -> None:
    """TOML's nan and inf, and durations past timedelta's range, are one line, not a crash."""
    assert error_of([planning(timeout=value)]).startswith("webhook 'planning': invalid timeout: ")


# --- secrets ----------------------------------------------------------------------------------


def test_the_environment_secret_wins_over_the_file() -> None:
    """``PROPAGATOR_WEBHOOK_<NAME>_SECRET`` is used even when the table has a secret."""
    webhook = resolve_one(planning(secret=SECRET), environ={SECRET_VARIABLE: ENV_SECRET})
    assert webhook.secret == ENV_SECRET


def test_an_empty_environment_secret_leaves_the_file_secret() -> None:
    """A variable set to nothing does not blank out the secret from the file."""
    webhook = resolve_one(planning(secret=SECRET), environ={SECRET_VARIABLE: ""})
    assert webhook.secret == SECRET


@pytest.mark.parametrize(
    ("table", "environ", "secret"),
    [
        (planning(secret=SECRET), {}, SECRET),
        (planning(), {SECRET_VARIABLE: ENV_SECRET}, ENV_SECRET),
    ],
)
def test_the_secret_and_the_url_are_masked_once_resolved(
    table: dict[str, Any], environ: dict[str, str], secret: str
) -> None:
    """Any text that later echoes the secret or the full URL has them masked."""
    assert secret in redact(secret)  # not known as a secret before the webhook is resolved
    resolve_one(table, environ)
    shown = redact(f"POST {URL} failed; signed with {secret}")
    assert secret not in shown
    assert "t0ken-in-the-path" not in shown
    assert "q-token" not in shown


def test_the_repr_shows_neither_the_secret_nor_the_url_path() -> None:
    """A settings object printed in a log or traceback carries no token."""
    webhook = resolve_one(planning(secret=SECRET))
    for shown in (repr(webhook), repr((webhook,)), str(webhook.describe())):
        assert "planning" in shown
        assert SECRET not in shown
        assert "t0ken-in-the-path" not in shown
        assert "q-token" not in shown
    assert webhook.describe()["signed"] is True


# --- the configuration file -------------------------------------------------------------------


def test_the_config_file_gives_its_webhooks_and_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[[webhooks]]`` tables arrive in ``Configuration.webhooks``; ``webhook_hold_max`` parses."""
    monkeypatch.setenv(SECRET_VARIABLE, ENV_SECRET)
    config = write(
        tmp_path,
        'webhook_hold_max = "3d"\n'
        + THREE_MAPPINGS
        + f"""
[[webhooks]]
name = "planning"
url = "{URL}"
mappings = ["jobs"]
fields = ["fab_order"]
max_batch = 50
max_wait = "250ms"

[[webhooks]]
name = "audit"
url = "https://audit.example.com/ingest/propagator"
""",
    )
    configuration = load_configuration(config)
    assert configuration.settings.webhook_hold_max == timedelta(days=3)
    planning_hook, audit = configuration.webhooks
    assert (planning_hook.name, audit.name) == ("planning", "audit")
    assert planning_hook.wanted == DeliveryFilter(("jobs",), ("fab_order",), ())
    assert (planning_hook.max_batch, planning_hook.max_wait) == (50, timedelta(milliseconds=250))
    assert planning_hook.secret == ENV_SECRET
    assert audit.secret is None
    assert audit.wanted == DeliveryFilter()


def test_webhooks_are_checked_against_every_mapping_not_only_the_selected(tmp_path: Path) -> None:
    """Running one mapping does not make a webhook for another one a mistake."""
    config = write(
        tmp_path,
        THREE_MAPPINGS
        + f'\n[[webhooks]]\nname = "planning"\nurl = "{URL}"\nmappings = ["orders"]\n',
    )
    configuration = load_configuration(config, selection=["jobs"])
    assert configuration.names == ("jobs",)
    (webhook,) = configuration.webhooks
    assert webhook.wanted.mappings == ("orders",)


def test_a_mistake_in_the_file_stops_loading_with_one_line(tmp_path: Path) -> None:
    """A wrong ``[[webhooks]]`` table fails the whole configuration, naming the webhook."""
    config = write(tmp_path, '[[webhooks]]\nname = "planning"\nurl = "ftp://example.com/in"\n')
    with pytest.raises(ConfigurationError, match=r"^webhook 'planning': invalid url: "):
        load_configuration(config)


def test_the_hold_defaults_to_a_week_and_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the key the hold is 7 days; ``PROPAGATOR_WEBHOOK_HOLD_MAX`` sets it too."""
    config = write(tmp_path, "")
    assert load_configuration(config).settings.webhook_hold_max == timedelta(days=7)
    assert load_configuration(config).webhooks == ()
    monkeypatch.setenv("PROPAGATOR_WEBHOOK_HOLD_MAX", "12h")
    assert load_configuration(config).settings.webhook_hold_max == timedelta(hours=12)
