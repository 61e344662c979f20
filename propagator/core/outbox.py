"""The sync history as an outbox: which rows an endpoint may be sent next, and how.

History ids come from one sequence, but concurrent sandbox transactions commit
in any order, so a reader can see id 12 before id 11 commits. A row is therefore
sent only when every id before it is known: either the ids run on without a
hole from the endpoint's cursor, or they are at or below ``settled_through``, the
highest id the database has proved will never appear later (every transaction
that could still commit one has ended). Nothing is announced out of order and
nothing committed is skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from propagator.core.webhook_filter import DeliveryFilter

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "Batch",
    "DeliveryFilter",
    "Gap",
    "OutboxRow",
    "deliverable_count",
    "delivery_body",
    "delivery_id",
    "next_batch",
    "retry_delay",
    "sign",
]

DELIVERY_HEADER: Final = "Propagator-Delivery"
SIGNATURE_HEADER: Final = "Propagator-Signature"
PAYLOAD_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One history row as sent: key and values are the JSON text stored, sent byte for byte."""

    id: int
    mapping: str
    source: str
    field: str
    key_json: str
    key_label: str
    old_json: str
    new_json: str
    changed_at: datetime | None
    applied_at: datetime

    def as_change(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mapping": self.mapping,
            "key": _Raw(self.key_json),
            "key_label": self.key_label,
            "field": self.field,
            "old": _Raw(self.old_json),
            "new": _Raw(self.new_json),
            "source": self.source,
            "production_committed_at": _iso(self.changed_at),
            "sandbox_committed_at": _iso(self.applied_at),
        }


@dataclass(frozen=True, slots=True)
class Gap:
    """History after ``after`` up to ``through`` was pruned before this endpoint got it."""

    after: int
    through: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "after_id": self.after,
            "through_id": self.through,
            "reason": "pruned from the history before this endpoint received it",
        }


@dataclass(frozen=True, slots=True)
class Batch:
    """The next request for an endpoint, and where its cursor stands once it is acknowledged."""

    changes: tuple[OutboxRow, ...]
    cursor_after: int
    gap: Gap | None = None
    blocked: bool = False  # rows after a hole in the ids wait until it settles

    @property
    def needs_request(self) -> bool:
        return bool(self.changes) or self.gap is not None


def deliverable_count(ids: Sequence[int], cursor: int, settled_through: int) -> int:
    """How many of ``ids`` (ascending, all above ``cursor``) may be sent now, from the first.

    A row may go when no id before it can still appear: the ids run on from the
    cursor without a hole, or the row is at or below ``settled_through``.
    """
    expected = cursor + 1
    count = 0
    for row_id in ids:
        if row_id != expected and row_id - 1 > settled_through:
            break
        expected = row_id + 1
        count += 1
    return count


def next_batch(
    rows: Sequence[OutboxRow],
    cursor: int,
    *,
    settled_through: int,
    wanted: DeliveryFilter,
    max_batch: int,
    pruned_through: int = 0,
) -> Batch:
    """The changes to send next (at most ``max_batch``) from rows read after ``cursor``.

    Rows the endpoint does not want are passed over: the cursor moves past them
    with the next acknowledged request, or alone when nothing wanted is found.
    History pruned past the cursor becomes a ``Gap`` announced with the batch.
    """
    gap = Gap(cursor, pruned_through) if pruned_through > cursor else None
    start = max(cursor, pruned_through)
    rows = [r for r in rows if r.id > start]
    count = deliverable_count([r.id for r in rows], start, max(settled_through, start))
    chosen: list[OutboxRow] = []
    cursor_after = start
    full = False
    for row in rows[:count]:
        if wanted.wants(row):
            chosen.append(row)
        cursor_after = row.id
        if len(chosen) == max_batch:
            full = True
            break
    return Batch(tuple(chosen), cursor_after, gap, blocked=count < len(rows) and not full)


def delivery_id(batch: Batch) -> str:
    """``<first id>-<last id>`` of the request (a gap notice alone names the gap's ids)."""
    if batch.changes:
        return f"{batch.changes[0].id}-{batch.changes[-1].id}"
    assert batch.gap is not None
    return f"{batch.gap.after + 1}-{batch.gap.through}"


class _Raw(str):
    """JSON text stored in the history, embedded as is (never parsed and printed again)."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def delivery_body(batch: Batch, endpoint: str) -> bytes:
    """The request body: compact JSON, the stored values embedded byte for byte."""
    head = {
        "version": PAYLOAD_VERSION,
        "endpoint": endpoint,
        "delivery": delivery_id(batch),
        "gap": None if batch.gap is None else batch.gap.as_dict(),
    }
    parts = [json.dumps(head, separators=(",", ":"))[:-1], ',"changes":[']
    for number, row in enumerate(batch.changes):
        if number:
            parts.append(",")
        parts.append(_change_json(row))
    parts.append("]}")
    return "".join(parts).encode()


def _change_json(row: OutboxRow) -> str:
    items = []
    for name, value in row.as_change().items():
        text = value if isinstance(value, _Raw) else json.dumps(value, separators=(",", ":"))
        items.append(f'"{name}":{text}')
    return "{" + ",".join(items) + "}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Propagator-Signature`` value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    The MAC covers ``"<t>.<body>"``, so a receiver can refuse stale timestamps and
    a replayed request cannot be given a fresh one.
    """
    message = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay(
    failures: int,
    *,
    initial: float,
    maximum: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row.

    Exponential backoff with "equal jitter": at least half the exponential step,
    so a recovering receiver is not hit by every sender at once, and never more
    than ``maximum``.
    """
    step: float = min(maximum, initial * 2.0 ** min(max(0, failures - 1), 60))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter
