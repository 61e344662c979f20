"""The history as an outbox: which rows go next, in order, and the signed body that carries them."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.outbox import (
    Batch,
    DeliveryFilter,
    Gap,
    OutboxRow,
    deliverable_count,
    delivery_body,
    delivery_id,
    next_batch,
    retry_delay,
    sign,
)

EVERYTHING = DeliveryFilter()
APPLIED_AT = datetime(2026, 12, 5, 14, 3, 21, 246871, tzinfo=UTC)
CHANGE_KEYS = ["id", "mapping", "key", "key_label", "field", "old", "new", "source"]
CHANGE_KEYS += ["production_committed_at", "sandbox_committed_at"]


def row(row_id: int, *, field: str = "fab_order", old: str = "5.0", new: str = "6.0") -> OutboxRow:
    """A ``jobs`` change of key (10001, "A") made by an event."""
    key, label = '[10001, "A"]', "10001-A"
    return OutboxRow(row_id, "jobs", "event", field, key, label, old, new, None, APPLIED_AT)


def other_row(row_id: int) -> OutboxRow:
    """A change no filter in these tests wants: another mapping, field and source."""
    mapping, source, field = "orders", "reconcile", "status"
    return OutboxRow(row_id, mapping, source, field, "[7]", "7", "1", "2", None, APPLIED_AT)


def plan(
    rows: list[OutboxRow],
    *,
    settled: int = 0,
    wanted: DeliveryFilter = EVERYTHING,
    max_batch: int = 100,
    pruned: int = 0,
) -> Batch:
    """The next batch for an endpoint whose cursor stands at 10."""
    return next_batch(
        rows, 10, settled_through=settled, wanted=wanted, max_batch=max_batch, pruned_through=pruned
    )


def ids(batch: Batch) -> list[int]:
    return [change.id for change in batch.changes]


def commit_rounds(endings: list[int], data: st.DataObject) -> Iterator[tuple[set[int], int]]:
    """After each transaction ends: the ids ended so far and a ``settled_through`` a probe
    could report (any value whose lower ids have all ended); last, everything settled."""
    ended: set[int] = set()
    for ending in endings:
        ended.add(ending)
        yield ended, data.draw(st.integers(0, safe_settled_through(ended)), "settled_through")
    yield ended, len(endings)  # everything has ended and the probe has caught up


def safe_settled_through(ended: set[int]) -> int:
    """The highest id such that every id up to it has committed or rolled back."""
    settled = 0
    while settled + 1 in ended:
        settled += 1
    return settled


@st.composite
def histories(draw: st.DrawFn) -> tuple[frozenset[int], list[int]]:
    """Ids 1..n from the sequence: the ones that commit, and the order their transactions end.

    Every id ends once (committing or rolling back), in any order, as concurrent sandbox
    transactions do; a reader sees only the committed ids whose transaction has ended.
    """
    handed_out = range(1, draw(st.integers(1, 25)) + 1)
    committed = draw(st.sets(st.sampled_from(handed_out)))
    endings = draw(st.permutations(handed_out))
    return frozenset(committed), list(endings)


# --- deliverable_count ------------------------------------------------------------------------


def test_ids_running_on_from_the_cursor_all_go() -> None:
    """Ids that follow the cursor without a hole may all be sent."""
    assert deliverable_count([11, 12, 13], cursor=10, settled_through=0) == 3


def test_a_hole_stops_delivery_until_it_settles() -> None:
    """An id after a hole waits: the missing id may still commit."""
    assert deliverable_count([11, 12, 14, 15], cursor=10, settled_through=0) == 2
    assert deliverable_count([12], cursor=10, settled_through=10) == 0


def test_a_settled_hole_is_passed() -> None:
    """Once ``settled_through`` covers a hole and the row after it, the ids after it go."""
    assert deliverable_count([11, 12, 14, 15], cursor=10, settled_through=14) == 4
    assert deliverable_count([13, 17, 18], cursor=10, settled_through=17) == 3


def test_the_id_right_after_a_settled_hole_goes() -> None:
    """With every id up to 13 settled, nothing before 14 can still appear: 14 goes."""
    assert deliverable_count([11, 12, 14, 15], cursor=10, settled_through=13) == 4


def test_settled_ids_pass_holes_but_a_later_hole_still_stops() -> None:
    """Ids at or below ``settled_through`` pass holes; a hole above it stops the rest."""
    assert deliverable_count([12, 14, 16, 17, 19], cursor=10, settled_through=14) == 2
    assert deliverable_count([12, 14, 15, 17], cursor=10, settled_through=14) == 3


@given(histories(), st.data())
def test_delivery_is_in_order_and_skips_nothing_that_commits(
    history: tuple[frozenset[int], list[int]], data: st.DataObject
) -> None:
    """Whatever order transactions end in, sent ids only grow and no committed id is passed.

    After each transaction ends the reader sees the committed ids above the cursor;
    ``settled_through`` is any value whose lower ids have all ended (a probe may lag).
    Once every transaction has ended and settled, every committed id has been sent.
    """
    committed, endings = history
    cursor, sent = 0, []
    for ended, settled in commit_rounds(endings, data):
        visible = sorted(i for i in ended & committed if i > cursor)
        count = deliverable_count(visible, cursor, settled)
        sent += visible[:count]
        cursor = sent[-1] if sent else cursor
        assert sent == sorted(i for i in committed if i <= cursor)
    assert all(first < second for first, second in pairwise(sent))
    assert sent == sorted(committed)


# --- next_batch -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wanted",
    [
        DeliveryFilter(mappings=("jobs",)),
        DeliveryFilter(fields=("fab_order",)),
        DeliveryFilter(sources=("event",)),
    ],
)
def test_unwanted_rows_are_passed_over_and_the_cursor_moves_past_them(
    wanted: DeliveryFilter,
) -> None:
    """A filter leaves rows out of the request, and the cursor still moves past them."""
    batch = plan([row(11), other_row(12), row(13), other_row(14)], wanted=wanted)
    assert ids(batch) == [11, 13]
    assert batch.cursor_after == 14
    assert not batch.blocked


def test_only_unwanted_rows_move_the_cursor_without_a_request() -> None:
    """Nothing wanted: no request is needed, but the cursor may move past the rows."""
    batch = plan([other_row(11), other_row(12)], wanted=DeliveryFilter(fields=("fab_order",)))
    assert batch.changes == ()
    assert not batch.needs_request
    assert batch.cursor_after == 12


def test_a_full_batch_stops_at_max_batch_and_its_last_change() -> None:
    """At most ``max_batch`` changes go; the cursor then stands at the last one included.

    A full batch is not held back by a hole after it: settling would not add to it.
    """
    for rows in ([row(i) for i in range(11, 16)], [row(11), row(12), row(13), row(15)]):
        batch = plan(rows, max_batch=2)
        assert (ids(batch), batch.cursor_after, batch.blocked) == ([11, 12], 12, False)


def test_rows_after_a_hole_block_a_batch_that_is_not_full() -> None:
    """Rows wait behind a hole: the batch says so, and takes them once the hole settles."""
    rows = [row(11), row(12), row(14)]
    batch = plan(rows)
    assert (ids(batch), batch.cursor_after, batch.blocked) == ([11, 12], 12, True)
    settled = plan(rows, settled=14)
    assert (ids(settled), settled.cursor_after, settled.blocked) == ([11, 12, 14], 14, False)


def test_unwanted_rows_before_a_hole_still_move_the_cursor() -> None:
    """Behind a hole the cursor may move past unwanted rows alone, and the batch waits."""
    batch = plan([other_row(11), row(13)], wanted=DeliveryFilter(fields=("fab_order",)))
    assert (batch.changes, batch.cursor_after, batch.blocked) == ((), 11, True)


def test_nothing_after_the_cursor_is_neither_a_request_nor_blocked() -> None:
    """With no rows to read the endpoint is idle: no request, no wait for a hole."""
    batch = plan([])
    assert (batch.needs_request, batch.blocked, batch.cursor_after) == (False, False, 10)


def test_a_batch_holding_exactly_max_batch_before_a_hole_is_not_blocked() -> None:
    """A batch already at ``max_batch`` gains nothing from the hole settling: not blocked."""
    batch = plan([row(11), row(12), row(14)], max_batch=2)
    assert ids(batch) == [11, 12]
    assert not batch.blocked


def test_pruned_history_past_the_cursor_is_announced_as_a_gap() -> None:
    """History pruned past the cursor becomes a gap notice; rows up to it are not sent."""
    rows = [row(15), row(18), row(20), row(21), row(22)]
    batch = plan(rows, pruned=20)
    assert batch.gap == Gap(after=10, through=20)
    assert ids(batch) == [21, 22]
    assert batch.cursor_after == 22
    assert delivery_id(batch) == "21-22"


def test_a_gap_alone_is_a_request_naming_the_gap() -> None:
    """A gap with no changes after it is still sent; its delivery id names the pruned ids."""
    batch = plan([], pruned=20)
    assert batch.gap == Gap(after=10, through=20)
    assert batch.needs_request
    assert batch.cursor_after == 20
    assert delivery_id(batch) == "11-20"


def test_history_pruned_only_up_to_the_cursor_is_no_gap() -> None:
    """Rows pruned after the endpoint received them are nobody's business: no gap."""
    batch = plan([row(11)], pruned=10)
    assert batch.gap is None
    assert ids(batch) == [11]


@given(histories(), st.sets(st.integers(1, 25)), st.integers(1, 4), st.data())
def test_successive_batches_send_every_wanted_change_once_in_order(
    history: tuple[frozenset[int], list[int]],
    unwanted: set[int],
    max_batch: int,
    data: st.DataObject,
) -> None:
    """Acknowledging batch after batch sends each wanted committed change once, ascending."""
    committed, endings = history
    wanted = DeliveryFilter(fields=("fab_order",))
    rows = {i: other_row(i) if i in unwanted else row(i) for i in committed}
    cursor, sent = 0, []
    for ended, settled in commit_rounds(endings, data):
        while True:
            visible = [rows[i] for i in sorted(ended & committed) if i > cursor]
            batch = next_batch(
                visible, cursor, settled_through=settled, wanted=wanted, max_batch=max_batch
            )
            assert len(batch.changes) <= max_batch
            sent += ids(batch)
            if batch.cursor_after == cursor:
                break
            cursor = batch.cursor_after
        assert sent == sorted(i for i in committed - unwanted if i <= cursor)
    assert sent == sorted(committed - unwanted)


# --- the request body -------------------------------------------------------------------------


def test_the_body_is_compact_json_with_keys_in_the_documented_order() -> None:
    """The body parses as JSON; its keys and each change's keys come in the documented order."""
    batch = Batch((row(4117), row(4118)), 4118)
    body = delivery_body(batch, "planning")
    payload = json.loads(body)
    assert list(payload) == ["version", "endpoint", "delivery", "gap", "changes"]
    assert [list(change) for change in payload["changes"]] == [CHANGE_KEYS, CHANGE_KEYS]
    assert (payload["version"], payload["endpoint"]) == (1, "planning")
    assert payload["delivery"] == delivery_id(batch) == "4117-4118"
    assert payload["gap"] is None
    assert payload["changes"][0]["key"] == [10001, "A"]
    assert payload["changes"][0]["production_committed_at"] is None
    assert payload["changes"][0]["sandbox_committed_at"] == "2026-12-05T14:03:21.246871+00:00"
    assert body.startswith(b'{"version":1,"endpoint":"planning","delivery":"4117-4118",')


def test_stored_values_are_embedded_byte_for_byte() -> None:
    """Numerics keep their scale and stored JSON text is not re-printed."""
    change = row(7, old="12.10", new='{"b": 1, "a": [2.50, null]}')
    body = delivery_body(Batch((change,), 7), "audit")
    assert b'"old":12.10' in body
    assert b'"new":{"b": 1, "a": [2.50, null]}' in body
    assert b'"key":[10001, "A"]' in body
    parsed = json.loads(body, parse_float=Decimal)["changes"][0]
    assert str(parsed["old"]) == "12.10"


@given(st.text(), st.text(), st.text(), st.decimals(-(10**12), 10**12, places=2))
def test_any_names_and_values_give_a_body_that_parses_back(
    endpoint: str, label: str, field: str, value: Decimal
) -> None:
    """Quotes, control characters and any Unicode in names survive; numbers keep their text."""
    change = OutboxRow(
        7, "jobs", "event", field, '["x"]', label, "null", str(value), None, APPLIED_AT
    )
    payload = json.loads(delivery_body(Batch((change,), 7), endpoint), parse_float=Decimal)
    assert payload["endpoint"] == endpoint
    (parsed,) = payload["changes"]
    assert (parsed["key_label"], parsed["field"], parsed["old"]) == (label, field, None)
    assert Decimal(parsed["new"]) == value


def test_the_documented_gap_notice_is_reproduced_exactly() -> None:
    """The gap notice and signature in docs/webhooks.md are what the code sends."""
    batch = Batch((), 4116, Gap(after=3990, through=4116))
    body = delivery_body(batch, "planning")
    assert body == (
        b'{"version":1,"endpoint":"planning","delivery":"3991-4116","gap":{"after_id":3990,'
        b'"through_id":4116,"reason":"pruned from the history before this endpoint received it"},'
        b'"changes":[]}'
    )
    assert len(body) == 181
    assert sign("wh-example-secret-0123456789", 1796479402, body) == (
        "t=1796479402,v1=a346fa52a9e9640970b34453c6e2c496f5c52df0cf8fd00e2a9bd6b2787da8da"
    )


# --- signature and retries --------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    """A receiver computing HMAC-SHA256 over ``<t>.<body>`` gets the ``v1`` sent."""
    secret, body, t = "0123456789abcdef-secret", b'{"changes":[]}', 1_700_000_000
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign(secret, t, body) == f"t={t},v1={expected}"


def test_the_signature_changes_with_the_body_the_time_and_the_secret() -> None:
    """A tampered body, a replayed time or another secret does not verify."""
    secret, body, t = "0123456789abcdef-secret", b'{"changes":[]}', 1_700_000_000
    original = sign(secret, t, body)
    assert sign(secret, t, body + b" ") != original
    assert sign(secret, t + 1, body).split(",v1=")[1] != original.split(",v1=")[1]
    assert sign(secret + "x", t, body) != original


class Extreme(random.Random):
    """A jitter source that always picks the low or the high end."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_retry_delays_double_from_initial_up_to_maximum() -> None:
    """With no jitter the waits double from ``initial`` until ``maximum`` caps them."""
    top = [retry_delay(f, initial=1.0, maximum=20.0, rng=Extreme(True)) for f in range(1, 8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    low = [retry_delay(f, initial=1.0, maximum=20.0, rng=Extreme(False)) for f in range(1, 8)]
    assert low == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


@given(st.integers(0, 10**9), st.floats(0.001, 3600.0), st.floats(1.0, 86_400.0), st.randoms())
def test_a_retry_delay_is_between_half_its_step_and_its_step(
    failures: int, initial: float, maximum: float, rng: random.Random
) -> None:
    """Each wait is within [step/2, step]; step grows from ``initial``, capped at ``maximum``."""
    maximum = max(maximum, initial)
    doublings = max(0, failures - 1)
    capped = doublings >= math.log2(maximum / initial)
    step = maximum if capped else initial * 2.0**doublings
    delay = retry_delay(failures, initial=initial, maximum=maximum, rng=rng)
    assert math.isfinite(delay)
    assert step / 2 * (1 - 1e-12) <= delay <= step * (1 + 1e-12)


def test_a_huge_failure_count_waits_the_maximum_without_overflow() -> None:
    """Days of failures in a row neither overflow nor exceed ``maximum``."""
    for failures in (1_100, 10**6, 10**18):
        delay = retry_delay(failures, initial=0.5, maximum=60.0, rng=Extreme(True))
        assert delay == 60.0
