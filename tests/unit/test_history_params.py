"""History filters from text: every hostile value is one ConfigurationError, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from propagator.errors import ConfigurationError
from propagator.services.history.queries import HistoryQuery, parse_key, parse_time
from propagator.settings import parse_duration

NOW = datetime(2026, 1, 1, tzinfo=UTC)

HOSTILE = [
    {"since": "0001-01-01"},
    {"until": "0001-01-01T00:00"},
    {"since": "9999-12-31T23:59:59"},
    {"since": "1000000d"},
    {"since": "999999999999d"},
    {"since": "9" * 400 + "d"},
    {"since": "１h"},
    {"key": "[" * 3000},
    {"key": "[" * 3000 + "]" * 3000},
    {"key": "[1, [2]]"},
    {"key": '[{"a": 1}]'},
    {"key": "x" * 1001},
    {"limit": "9" * 5000},
    {"before": "9" * 5000},
    {"before": "9" * 19},
    {"limit": "１"},
    {"limit": "²"},
    {"before": "٣"},
    {"limit": "0"},
    {"before": "0"},
]


@pytest.mark.parametrize("params", HOSTILE, ids=lambda p: repr(p)[:40])
def test_hostile_filters_are_configuration_errors(params: dict[str, str]) -> None:
    """Out-of-range times and ages, deep or long keys, huge or non-ASCII numbers: one clear line."""
    with pytest.raises(ConfigurationError) as refused:
        HistoryQuery.from_params(params, now=NOW)
    assert "\n" not in str(refused.value)
    assert len(str(refused.value)) < 1200


def test_sane_extremes_still_parse() -> None:
    """The edges of what is accepted: a century back, the year 1900, 18 digits, a quoted bracket."""
    query = HistoryQuery.from_params(
        {"since": "36525d", "until": "2000-01-01T00:00+00:00", "before": "9" * 18}, now=NOW
    )
    assert query.since == NOW - timedelta(days=36_525)
    assert query.before == int("9" * 18)
    assert parse_time("1900-01-01T00:00+00:00", now=NOW).year == 1900
    assert parse_key('[1, "[{"]') == "1-[{"
    assert parse_key('["a\\"[", 2]') == 'a"[-2'
    assert parse_time("2h", now=NOW) == NOW - timedelta(hours=2)


def test_durations_are_ascii_and_bounded() -> None:
    """parse_duration ignores non-ASCII digits and turns an overflow into a ValueError."""
    assert parse_duration("１h") == "１h"  # left for the caller to refuse
    with pytest.raises(ValueError, match="too long"):
        parse_duration("999999999999d")
