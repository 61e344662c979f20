"""Notification payload v1: accepted shapes, bounded rejections, and a fuzz that never crashes."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propagator.core.payload import (
    MAX_PAYLOAD_BYTES,
    Change,
    Heartbeat,
    MalformedNotification,
    Resync,
    heartbeat_payload,
    parse_notification,
)

REASONS = {"invalid_json", "unknown_version", "bad_keys", "oversized", "other"}


def test_change_payload_gives_keys_in_column_order_and_time() -> None:
    """A change payload yields its keys as tuples and the production change time."""
    parsed = parse_notification('{"v":1,"t":1700000000.25,"k":[[10001,"A"],[10002,"B"]]}', 2)
    assert parsed == Change(((10001, "A"), (10002, "B")), 1700000000.25)


def test_duplicate_keys_in_one_payload_are_merged() -> None:
    """The same key listed twice in one payload is one key."""
    parsed = parse_notification('{"v":1,"t":1,"k":[[1,"A"],[1,"A"]]}', 2)
    assert isinstance(parsed, Change)
    assert parsed.keys == ((1, "A"),)


def test_numeric_key_parts_equal_their_integer_form() -> None:
    """to_jsonb of a numeric key (42.0) and of an integer key (42) give the same key."""
    parsed = parse_notification('{"v":1,"t":1,"k":[[42.0,"A"],[1.5,"B"]]}', 2)
    assert isinstance(parsed, Change)
    assert parsed.keys == ((42, "A"), (Decimal("1.5"), "B"))


def test_keys_with_a_null_part_are_skipped() -> None:
    """A key with a NULL part cannot match a row, so it is left out rather than rejected."""
    parsed = parse_notification('{"v":1,"t":1,"k":[[null,"A"],[2,"B"]]}', 2)
    assert isinstance(parsed, Change)
    assert parsed.keys == ((2, "B"),)


def test_resync_payload() -> None:
    """A resync payload asks for a full reconcile."""
    assert parse_notification('{"v":1,"t":5,"resync":true}', 2) == Resync(5.0)


def test_heartbeat_round_trip() -> None:
    """The heartbeat the daemon sends parses back to its instance id and time."""
    assert parse_notification(heartbeat_payload("abc", 12.5), 2) == Heartbeat("abc", 12.5)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not json", "invalid_json"),
        ('{"v":1,"t":NaN,"k":[]}', "invalid_json"),
        ("[" * 5000 + "]" * 5000, "oversized"),
        ("[" * 3000 + "]" * 3000, "invalid_json"),
        ('{"v":2,"t":1,"k":[[1,"A"]]}', "unknown_version"),
        ('{"t":1,"k":[[1,"A"]]}', "unknown_version"),
        ('{"v":true,"t":1,"k":[[1,"A"]]}', "unknown_version"),
        ('{"v":1,"t":1,"k":[[1]]}', "bad_keys"),
        ('{"v":1,"t":1,"k":[[1,"A","x"]]}', "bad_keys"),
        ('{"v":1,"t":1,"k":[[1,["A"]]]}', "bad_keys"),
        ('{"v":1,"t":1,"k":[[1,{"a":1}]]}', "bad_keys"),
        ('{"v":1,"t":1,"k":{"1":"A"}}', "bad_keys"),
        ('{"v":1,"t":1,"k":[1]}', "bad_keys"),
        ('{"v":1,"k":[[1,"A"]]}', "other"),
        ('{"v":1,"t":"soon","k":[[1,"A"]]}', "other"),
        ('{"v":1,"t":1e999,"k":[[1,"A"]]}', "other"),
        ('{"v":1,"t":1}', "other"),
        ('{"v":1,"t":1,"hb":""}', "other"),
        ("[1, 2]", "other"),
        ('"text"', "other"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_bounded_reason(payload: str, reason: str) -> None:
    """Each kind of bad payload is rejected with its own bounded reason label."""
    with pytest.raises(MalformedNotification) as caught:
        parse_notification(payload, 2)
    assert caught.value.reason == reason


def test_payload_at_the_notify_limit_is_oversized() -> None:
    """A payload of 8000 bytes or more is refused before parsing (PostgreSQL's own limit)."""
    keys = [[i, "A"] for i in range(2000)]
    text = json.dumps({"v": 1, "t": 1, "k": keys})
    assert len(text) >= MAX_PAYLOAD_BYTES
    with pytest.raises(MalformedNotification) as caught:
        parse_notification(text, 2)
    assert caught.value.reason == "oversized"


def test_huge_exponent_key_stays_cheap() -> None:
    """A key like 1e999999999 is kept as a decimal, never expanded into a gigantic integer."""
    parsed = parse_notification('{"v":1,"t":1,"k":[[1e999999999,"A"]]}', 2)
    assert isinstance(parsed, Change)
    assert parsed.keys[0][0] == Decimal("1e999999999")


json_values: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["v", "t", "k", "hb", "resync", "x"]), children, max_size=5
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_raises_anything_else(text: str) -> None:
    """Arbitrary text either parses or raises MalformedNotification with a known reason."""
    try:
        parse_notification(text, 2)
    except MalformedNotification as error:
        reason = error.reason
        assert reason in REASONS


@settings(max_examples=400, deadline=None)
@given(json_values, st.integers(min_value=1, max_value=3))
def test_fuzz_json_shaped_payloads_never_raise_anything_else(document: Any, width: int) -> None:
    """JSON documents near the v1 shape either parse to a valid notification or are rejected."""
    if isinstance(document, dict):
        document.setdefault("v", 1)
    text = json.dumps(document)
    try:
        parsed = parse_notification(text, width)
    except MalformedNotification as error:
        reason = error.reason
        assert reason in REASONS
        return
    if isinstance(parsed, Change):
        assert all(len(key) == width for key in parsed.keys)
        assert all(not isinstance(part, list | dict) for key in parsed.keys for part in key)
