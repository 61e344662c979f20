"""Notification payload v1: what the production trigger and the daemon's heartbeat send.

A payload only ever says "these keys may have changed" (or "too many changed:
resync", or "my own heartbeat came back"); values never travel in it, so a
payload can at worst cause a needless re-read. Anything that is not a valid v1
payload is rejected with one of a few bounded reasons, fit for a metric label,
and parsing never raises anything but ``MalformedNotification``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from propagator.core.mapping import Key

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Change",
    "Heartbeat",
    "MalformedNotification",
    "MalformedReason",
    "Notification",
    "Resync",
    "heartbeat_payload",
    "parse_notification",
]

MAX_PAYLOAD_BYTES = 8000  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
MAX_INSTANCE_ID_LENGTH = 200
VERSION = 1

MalformedReason = Literal["invalid_json", "unknown_version", "bad_keys", "oversized", "other"]


class MalformedNotification(ValueError):
    """A payload that is not valid v1; ``reason`` is one of a bounded set of labels."""

    def __init__(self, reason: MalformedReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: MalformedReason = reason
        self.detail = detail
        self.channel = ""  # set by the listener that heard it


@dataclass(frozen=True, slots=True)
class Change:
    """Rows with these keys may have changed at production time ``changed_at`` (epoch s)."""

    keys: tuple[Key, ...]
    changed_at: float
    channel: str = ""  # where it was heard: routes it to the mappings of that table


@dataclass(frozen=True, slots=True)
class Resync:
    """Too many keys changed in one statement to list: converge everything."""

    changed_at: float
    channel: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A daemon's own probe of the NOTIFY path, sent by instance ``instance_id``."""

    instance_id: str
    sent_at: float


Notification = Change | Resync | Heartbeat


def heartbeat_payload(instance_id: str, sent_at: float) -> str:
    """The JSON text of a heartbeat, as the listener sends it to itself."""
    return json.dumps({"v": VERSION, "t": sent_at, "hb": instance_id}, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _timestamp(document: dict[str, Any]) -> float:
    value = document.get("t")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise MalformedNotification("other", "'t' must be a number of epoch seconds")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise MalformedNotification("other", "'t' must be finite")
    return seconds


def _key_part(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        # to_jsonb() of an integer column gives 42, of a numeric 42.0: the same key.
        # (The exponent bound keeps "1e999999999" from becoming a gigantic int.)
        if value.is_finite() and abs(value.adjusted()) <= 40 and value == int(value):
            return int(value)
        return value
    raise MalformedNotification("bad_keys", "a key part must be a string, number or boolean")


def _keys(raw: Any, key_width: int) -> tuple[Key, ...]:
    if not isinstance(raw, list):
        raise MalformedNotification("bad_keys", "'k' must be a list of keys")
    keys: list[Key] = []
    for item in raw:
        if not isinstance(item, list) or len(item) != key_width:
            raise MalformedNotification("bad_keys", f"each key must be a list of {key_width} parts")
        key = tuple(_key_part(part) for part in item)
        if any(part is None for part in key):
            continue  # a row with a NULL key column cannot be matched; reconcile skips it too
        keys.append(key)
    return tuple(dict.fromkeys(keys))


# One decoder for every notification: json.loads with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def parse_notification(payload: str, key_width: int, channel: str = "") -> Notification:
    """Parse a v1 payload heard on ``channel``, for a table with ``key_width`` key columns."""
    try:
        size = len(payload.encode("utf-8", "surrogatepass"))
    except (AttributeError, UnicodeError):
        raise MalformedNotification("other", "payload is not text") from None
    if size >= MAX_PAYLOAD_BYTES:
        raise MalformedNotification("oversized", f"{size} bytes (limit {MAX_PAYLOAD_BYTES - 1})")
    try:
        document = _DECODER.decode(payload)
    except RecursionError:
        raise MalformedNotification("invalid_json", "nested too deeply") from None
    except ValueError as error:
        raise MalformedNotification("invalid_json", str(error)[:200]) from None
    if not isinstance(document, dict):
        raise MalformedNotification("other", "payload must be a JSON object")
    version = document.get("v")
    if isinstance(version, bool) or version != VERSION:
        raise MalformedNotification("unknown_version", f"version {str(version)[:20]!r}")
    changed_at = _timestamp(document)
    if "hb" in document:
        instance = document["hb"]
        if not isinstance(instance, str) or not 0 < len(instance) <= MAX_INSTANCE_ID_LENGTH:
            raise MalformedNotification("other", "'hb' must be a short instance id")
        return Heartbeat(instance, changed_at)
    if document.get("resync") is True:
        return Resync(changed_at, channel)
    if "k" not in document:
        raise MalformedNotification("other", "payload has neither 'k', 'resync' nor 'hb'")
    return Change(_keys(document["k"], key_width), changed_at, channel)
