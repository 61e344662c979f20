"""Keys handed back because a sandbox user held their rows: kept, delayed, then due at once."""

from __future__ import annotations

from datetime import timedelta

from propagator.core.debounce import DebounceBuffer, PartitionedBuffer
from tests.helpers import FakeClock


def make(clock: FakeClock, *, hard_cap: int = 1000) -> DebounceBuffer:
    return DebounceBuffer(
        quiet=timedelta(milliseconds=50),
        max_delay=timedelta(milliseconds=500),
        max_keys=100,
        hard_cap=hard_cap,
        clock=clock,
    )


def test_deferred_keys_wait_out_their_delay_then_are_due_at_once() -> None:
    clock = FakeClock()
    buffer = make(clock)
    buffer.defer([(1,), (2,)], 5.0, retry_in=1.0)
    assert len(buffer) == 2
    assert buffer.due() is None
    assert buffer.take() is None
    assert buffer.seconds_until_due() == 1.0
    clock.advance(1.0)
    assert buffer.due() == "backlog"
    batch = buffer.take()
    assert batch is not None
    assert batch.keys == ((1,), (2,))
    assert batch.earliest_change == 5.0
    assert len(buffer) == 0


def test_a_drain_does_not_retry_a_deferred_key_before_its_time() -> None:
    """A shutdown drain ends even when a row stays held; the key is still buffered."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1,)])
    buffer.defer([(2,)], None, retry_in=1.0)
    batch = buffer.take("drain")
    assert batch is not None
    assert batch.keys == ((1,),)
    assert buffer.take("drain") is None
    assert len(buffer) == 1
    clock.advance(1.0)
    again = buffer.take("drain")
    assert again is not None
    assert again.keys == ((2,),)


def test_a_key_changed_again_while_deferred_coalesces_and_keeps_the_earliest_change() -> None:
    clock = FakeClock()
    buffer = make(clock)
    buffer.defer([(1,)], 10.0, retry_in=1.0)
    assert buffer.add([(1,)], changed_at=8.0) == 1
    assert len(buffer) == 1
    assert buffer.due() is None  # still waiting out the delay: the row is likely still held
    clock.advance(1.0)
    batch = buffer.take()
    assert batch is not None
    assert batch.earliest_change == 8.0


def test_deferring_a_key_already_pending_leaves_it_pending() -> None:
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1,)])
    buffer.defer([(1,)], None, retry_in=5.0)
    clock.advance(0.06)
    batch = buffer.take()
    assert batch is not None
    assert batch.keys == ((1,),)


def test_deferred_keys_count_towards_the_hard_cap_and_are_cleared() -> None:
    clock = FakeClock()
    buffer = make(clock, hard_cap=3)
    buffer.defer([(1,), (2,), (3,)], None, retry_in=1.0)
    buffer.add([(4,)])
    assert buffer.acknowledge_overflow()
    assert len(buffer) == 0
    buffer.defer([(5,)], None, retry_in=1.0)
    assert buffer.clear() == 1
    assert len(buffer) == 0
    assert buffer.seconds_until_due() is None


def test_partitioned_defer_hands_each_key_to_its_own_partition() -> None:
    clock = FakeClock()
    buffer = PartitionedBuffer(
        4,
        quiet=timedelta(milliseconds=50),
        max_delay=timedelta(milliseconds=500),
        max_keys=100,
        hard_cap=1000,
        clock=clock,
    )
    keys = [(n,) for n in range(40)]
    buffer.add(keys[:20])
    buffer.defer(keys, None, retry_in=1.0)
    assert len(buffer) == 40
    clock.advance(1.0)
    for key in keys:
        partition = buffer.partition_of(key)
        assert partition is buffer.partitions[hash(key) % 4]
    taken = [k for p in buffer.partitions if (b := p.take()) is not None for k in b.keys]
    assert sorted(taken) == keys
