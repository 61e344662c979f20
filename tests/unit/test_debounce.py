"""The debounce buffer: coalescing, the three flush rules and the hard cap, on a fake clock."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from propagator.core.debounce import DebounceBuffer, PartitionedBuffer
from tests.helpers import FakeClock


def make(clock: FakeClock, *, max_keys: int = 100, hard_cap: int = 1000) -> DebounceBuffer:
    return DebounceBuffer(
        quiet=timedelta(milliseconds=50),
        max_delay=timedelta(milliseconds=500),
        max_keys=max_keys,
        hard_cap=hard_cap,
        clock=clock,
    )


def test_duplicate_keys_coalesce_and_are_counted() -> None:
    """A key added three times is pending once and counts two coalesced duplicates."""
    buffer = make(FakeClock())
    assert buffer.add([(1, "A")]) == 0
    assert buffer.add([(1, "A"), (1, "A"), (2, "B")]) == 2
    assert len(buffer) == 2
    assert buffer.coalesced_total == 2


def test_flushes_after_the_quiet_window() -> None:
    """Nothing is due while keys keep arriving inside the quiet window; then a batch is."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1, "A")])
    clock.advance(0.049)
    assert buffer.due() is None
    assert buffer.take() is None
    clock.advance(0.002)
    batch = buffer.take()
    assert batch is not None
    assert batch.keys == ((1, "A"),)
    assert batch.reason == "quiet"
    assert len(buffer) == 0


def test_max_delay_bounds_a_steady_stream() -> None:
    """A stream that never goes quiet still flushes once the oldest key waited max_delay."""
    clock = FakeClock()
    buffer = make(clock)
    for i in range(20):
        buffer.add([(i, "A")])
        clock.advance(0.03)
        if i < 16:
            assert buffer.due() is None, i
    assert buffer.due() == "max_delay"
    batch = buffer.take()
    assert batch is not None
    assert len(batch.keys) == 20


def test_max_keys_flushes_at_once_in_arrival_order() -> None:
    """Reaching max_keys makes a batch due immediately, holding the oldest keys first."""
    buffer = make(FakeClock(), max_keys=3)
    buffer.add([(i, "A") for i in range(5)])
    assert buffer.due() == "max_keys"
    batch = buffer.take()
    assert batch is not None
    assert batch.keys == ((0, "A"), (1, "A"), (2, "A"))
    assert len(buffer) == 2
    assert buffer.due() is None


def test_seconds_until_due_is_the_nearest_rule() -> None:
    """The applier sleeps exactly until the quiet window or the max delay expires."""
    clock = FakeClock()
    buffer = make(clock)
    assert buffer.seconds_until_due() is None
    buffer.add([(1, "A")])
    assert abs((buffer.seconds_until_due() or 0) - 0.05) < 1e-9
    for _ in range(10):
        clock.advance(0.045)
        buffer.add([(2, "B")])
    assert abs((buffer.seconds_until_due() or 0) - 0.05) < 1e-9
    clock.advance(0.045)
    buffer.add([(3, "C")])
    assert abs((buffer.seconds_until_due() or 0) - 0.005) < 1e-9


def test_batch_keeps_the_earliest_production_change_time() -> None:
    """A batch carries the earliest change time of its keys, coalesced duplicates included."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1, "A")], changed_at=50.0)
    buffer.add([(2, "B")], changed_at=40.0)
    buffer.add([(1, "A")], changed_at=30.0)
    buffer.add([(3, "C")])
    batch = buffer.take("drain")
    assert batch is not None
    assert batch.earliest_change == 30.0
    assert batch.reason == "drain"


def test_hard_cap_drops_keys_and_asks_for_a_reconcile() -> None:
    """Past the hard cap the buffer empties and flags an overflow instead of growing."""
    buffer = make(FakeClock(), max_keys=10, hard_cap=5)
    buffer.add([(i, "A") for i in range(5)])
    assert not buffer.overflowed
    buffer.add([(5, "A"), (6, "A")])
    assert buffer.overflowed
    assert len(buffer) == 1
    assert buffer.acknowledge_overflow() is True
    assert buffer.acknowledge_overflow() is False


def test_drain_takes_a_batch_regardless_of_timing() -> None:
    """Shutdown drains pending keys without waiting for the quiet window."""
    buffer = make(FakeClock())
    buffer.add([(1, "A"), (2, "B")])
    assert buffer.due() is None
    batch = buffer.take("drain")
    assert batch is not None
    assert len(batch.keys) == 2
    assert buffer.take("drain") is None


@given(st.lists(st.lists(st.integers(0, 50), max_size=20), max_size=40), st.integers(1, 30))
def test_every_key_added_is_taken_exactly_once_or_covered_by_overflow(
    additions: list[list[int]], hard_cap: int
) -> None:
    """Each distinct key is either handed out in a batch or covered by an overflow flag."""
    clock = FakeClock()
    buffer = make(clock, max_keys=7, hard_cap=hard_cap)
    taken: list[tuple[int]] = []
    added: set[tuple[int]] = set()
    for group in additions:
        keys = [(value,) for value in group]
        added.update(keys)
        buffer.add(keys)
        assert len(buffer) <= hard_cap
        clock.advance(0.02)
        while (batch := buffer.take()) is not None:
            assert len(batch.keys) <= 7
            taken.extend(batch.keys)  # type: ignore[arg-type]
    while (batch := buffer.take("drain")) is not None:
        taken.extend(batch.keys)  # type: ignore[arg-type]
    if not buffer.overflowed:
        assert set(taken) == added
    assert len(buffer) == 0


def test_keys_left_behind_a_batch_are_due_as_soon_as_it_finishes() -> None:
    """Keys that gathered while the applier worked go next at once, not after max delay."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1, "A")])
    first = buffer.take("drain")
    assert first is not None
    for i in range(2, 30):  # a steady stream while the batch is applied: never quiet
        clock.advance(0.01)
        buffer.add([(i, "A")])
    assert buffer.due() is None  # still applying: the idle rules decide
    buffer.batch_finished()
    assert buffer.due() == "backlog"
    assert buffer.seconds_until_due() == 0.0
    batch = buffer.take()
    assert batch is not None
    assert batch.reason == "backlog"
    assert len(batch.keys) == 28


def test_a_stream_caught_up_with_waits_one_quiet_window_at_most() -> None:
    """Keys arriving while the applier worked recently wait one quiet window, not max delay."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.batch_finished()  # free, nothing waiting
    clock.advance(0.3)  # a gap in the stream, shorter than max delay
    for i in range(3):
        buffer.add([(i, "A")])
        clock.advance(0.01)  # every 10 ms: the quiet window never elapses
    assert abs((buffer.seconds_until_due() or 0) - 0.02) < 1e-9
    assert buffer.due() is None
    clock.advance(0.02)
    assert buffer.due() == "backlog"


def test_after_a_pause_the_idle_rules_apply_again() -> None:
    """A key arriving after a pause longer than max delay waits for quiet or max delay."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.batch_finished()
    clock.advance(0.6)
    for i in range(20):
        buffer.add([(i, "A")])
        clock.advance(0.03)
        if i < 16:
            assert buffer.due() is None, i
    assert buffer.due() == "max_delay"


def test_clearing_forgets_the_backlog() -> None:
    """After clear() (a full reconcile covers the keys) new keys follow the idle rules."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1, "A")])
    buffer.batch_finished()
    assert buffer.due() == "backlog"
    buffer.clear()
    clock.advance(1.0)
    buffer.add([(2, "A")])
    assert buffer.due() is None


@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 50), max_size=20), st.floats(0, 0.6), st.booleans()),
        max_size=40,
    )
)
def test_adaptive_flushes_hand_out_every_key_once(
    steps: list[tuple[list[int], float, bool]],
) -> None:
    """With batches finishing at random moments, every key added is handed out after it."""
    clock = FakeClock()
    buffer = make(clock, max_keys=7, hard_cap=10_000)
    waiting: set[tuple[int]] = set()  # added and not handed out since
    for group, pause, finish in steps:
        keys = [(value,) for value in group]
        waiting.update(keys)
        buffer.add(keys)
        clock.advance(pause)
        if (batch := buffer.take()) is not None:
            assert len(batch.keys) <= 7
            assert len(set(batch.keys)) == len(batch.keys)
            waiting.difference_update(batch.keys)  # type: ignore[arg-type]
        if finish:
            buffer.batch_finished()
        delay = buffer.seconds_until_due()
        assert delay is None or 0.0 <= delay <= buffer.max_delay
        assert len(buffer) == len(waiting)
    while (batch := buffer.take("drain")) is not None:
        waiting.difference_update(batch.keys)  # type: ignore[arg-type]
    assert not waiting


def make_partitioned(clock: FakeClock, partitions: int, hard_cap: int = 1000) -> PartitionedBuffer:
    return PartitionedBuffer(
        partitions,
        quiet=timedelta(milliseconds=50),
        max_delay=timedelta(milliseconds=500),
        max_keys=100,
        hard_cap=hard_cap,
        clock=clock,
    )


def test_a_key_always_lands_in_the_same_partition() -> None:
    """Two appliers can never hold one key: its partition never changes, duplicates coalesce."""
    buffer = make_partitioned(FakeClock(), 2)
    keys = [(i, "A") for i in range(200)]
    assert buffer.add(keys) == 0
    assert buffer.add(keys[:50]) == 50
    assert len(buffer) == 200
    shares: list[set[object]] = []
    for partition in buffer.partitions:
        share: set[object] = set()
        while (batch := partition.take("drain")) is not None:
            share.update(batch.keys)
        shares.append(share)
    first, second = shares
    assert first
    assert second
    assert not first & second
    assert first | second == set(keys)


def test_partitions_share_the_hard_cap_and_report_an_overflow_once() -> None:
    """Memory stays bounded by the one hard cap; an overflow anywhere asks for one reconcile."""
    buffer = make_partitioned(FakeClock(), 2, hard_cap=10)
    buffer.add([(i, "A") for i in range(40)])
    assert len(buffer) <= 10
    assert buffer.acknowledge_overflow() is True
    assert buffer.acknowledge_overflow() is False
    pending = len(buffer)
    assert buffer.clear() == pending
    assert len(buffer) == 0
