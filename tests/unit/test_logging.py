"""Structured logging: JSON lines off a terminal, console on one, no password anywhere."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from propagator.core.redact import register_secret
from propagator.observability.logging import (
    bind_context,
    clear_context,
    configure_logging,
    get_logger,
)
from propagator.settings import Settings

PASSWORD = "Hunter2-log-secret"
URL = f"postgresql://mirror:{PASSWORD}@db.example:5432/prod"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    clear_context()
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_mode_writes_one_object_per_line_with_the_standard_fields() -> None:
    """Each event is one JSON object with event, level, ISO UTC timestamp and logger."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    log = get_logger("propagator.test")
    log.info("batch_applied", rows=3, source="event")
    log.warning("listener_reconnected", attempt=2)
    lines = json_lines(stream)
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "batch_applied"
    assert first["level"] == "info"
    assert first["logger"] == "propagator.test"
    assert first["rows"] == 3
    timestamp = str(first["timestamp"])
    assert timestamp.endswith("Z")
    assert "T" in timestamp
    assert lines[1]["level"] == "warning"


def test_auto_format_is_json_when_the_stream_is_not_a_terminal() -> None:
    """log_format=auto renders JSON on a pipe or a file."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream=stream)
    get_logger("propagator.test").info("daemon_started")
    assert json_lines(stream)[0]["event"] == "daemon_started"


def test_auto_format_is_readable_console_on_a_terminal() -> None:
    """log_format=auto on a terminal gives a human line, not JSON."""
    stream = FakeTerminal()
    configure_logging(Settings(log_format="auto"), stream=stream)
    get_logger("propagator.test").info("daemon_started", instance="a1")
    text = stream.getvalue()
    assert "daemon_started" in text
    assert "instance" in text
    assert not text.lstrip().startswith("{")


def test_console_mode_is_plain_text_without_colour_off_a_terminal() -> None:
    """log_format=console writes readable lines; no ANSI escapes into a file."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="console"), stream=stream)
    get_logger("propagator.test").info("reconcile_finished", differences=0)
    text = stream.getvalue()
    assert "reconcile_finished" in text
    assert "differences=0" in text
    assert "\x1b[" not in text


def test_context_bound_through_contextvars_appears_in_lines() -> None:
    """Values bound with bind_context join every following line until cleared."""
    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream)
    bind_context(instance="replica-1")
    get_logger("propagator.test").info("leader_acquired")
    clear_context()
    get_logger("propagator.test").info("leader_released")
    first, second = json_lines(stream)
    assert first["instance"] == "replica-1"
    assert "instance" not in second


def test_standard_library_logging_uses_the_same_renderer() -> None:
    """psycopg/tenacity records (stdlib logging) come out as the same JSON lines."""
    stream = io.StringIO()
    configure_logging(log_format="json", stream=stream)
    logging.getLogger("tenacity.retry").warning("retrying in %s seconds", 0.5)
    (line,) = json_lines(stream)
    assert line["event"] == "retrying in 0.5 seconds"
    assert line["logger"] == "tenacity.retry"
    assert line["level"] == "warning"


def test_level_setting_filters_lower_levels() -> None:
    """log_level=warning drops info and debug lines from both structlog and stdlib."""
    stream = io.StringIO()
    configure_logging(log_format="json", log_level="warning", stream=stream)
    get_logger("propagator.test").info("quiet")
    logging.getLogger("psycopg").info("quiet too")
    get_logger("propagator.test").error("loud")
    assert [line["event"] for line in json_lines(stream)] == ["loud"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_no_password_in_any_line_even_inside_exceptions(log_format: str) -> None:
    """A configured URL's password never appears: values, messages, exceptions, tracebacks."""
    Settings(production_database_url=URL)  # registers the password, as at start-up
    register_secret(PASSWORD)
    stream = io.StringIO()
    configure_logging(log_format=log_format, log_level="debug", stream=stream)
    log = get_logger("propagator.test")
    log.info("connecting", url=URL, nested={"urls": [URL], URL: "key"})
    log.info(f"raw message with {PASSWORD}")
    try:
        raise ConnectionError(f'connection to "{URL}" failed: password={PASSWORD}')
    except ConnectionError as error:
        log.exception("connect_failed")
        log.warning("retrying", error=error)
        logging.getLogger("psycopg").exception("stdlib saw %s", URL)
        logging.getLogger("psycopg").error("also %s", error, exc_info=error)
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "connect_failed" in text
    assert "ConnectionError" in text
    assert "Traceback" in text
    assert "***" in text
    if log_format == "json":
        lines = json_lines(stream)  # redaction never broke the JSON
        assert len(lines) == 6
        assert "mirror:***@db.example" in str(lines[0]["url"])


def test_reconfiguring_replaces_the_previous_handler() -> None:
    """Calling configure_logging twice leaves one handler: no duplicated lines."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(log_format="json", stream=first)
    configure_logging(log_format="json", stream=second)
    get_logger("propagator.test").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1
