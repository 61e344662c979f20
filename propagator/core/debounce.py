"""Coalescing changed keys into batches: bounded in size and in delay.

A burst of updates to one row becomes one re-read; a steady stream is cut into
batches at most ``max_delay`` old; memory never grows past ``hard_cap`` keys —
beyond it the keys are dropped and the buffer asks for a full reconcile
instead, which converges them anyway (the notifications are level-triggered).
The clock is injected so the timing rules are tested without sleeping.

Batching adapts to the load: the quiet window and the max delay only govern an
idle applier. Keys still pending when the applier finishes a batch have already
waited (and coalesced) for as long as that batch took, so they are due at once
("backlog"). An applier that worked within the last max delay is part of a
stream still going on: a key arriving then waits one quiet window at most,
however busy the stream. Under a steady stream the applier so never waits out
the max delay, batches grow with the load and the lag stays near two batch
durations; only a burst after a pause is debounced by the quiet window and max
delay as a whole.

Keys a batch could not write because a sandbox user held their rows are handed
back with ``defer``: they wait out a retry delay apart (trying again at once
would only find the lock still held), then are due at once. They stay buffered
keys all along: counted, capped, cleared and drained like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from propagator.core.mapping import Key

__all__ = ["Batch", "DebounceBuffer", "FlushReason", "PartitionedBuffer"]

FlushReason = Literal["quiet", "max_delay", "max_keys", "backlog", "drain"]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Batch:
    """Keys to converge together, and the earliest production change among them."""

    keys: tuple[Key, ...]
    earliest_change: float | None
    reason: FlushReason
    arrived: float | None = None
    """Buffer clock when its oldest key arrived: a batch stuck in retries still ages."""


@dataclass(slots=True)
class _Pending:
    arrived: float  # buffer clock when the key was first added
    changed_at: float | None  # earliest production change time seen for it
    since: float | None = None  # a handed-back key: when it first arrived (``arrived`` moved)

    @property
    def waiting_since(self) -> float:
        return self.arrived if self.since is None else self.since

    def note_change(self, changed_at: float | None) -> None:
        """The key changed again: keep the earliest production time (the lag is from it)."""
        if changed_at is not None and (self.changed_at is None or changed_at < self.changed_at):
            self.changed_at = changed_at


class DebounceBuffer:
    """Pending keys in arrival order, with the rules that decide when to flush them."""

    def __init__(
        self,
        *,
        quiet: timedelta,
        max_delay: timedelta,
        max_keys: int,
        hard_cap: int,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_keys < 1 or hard_cap < 1:
            raise ValueError("max_keys and hard_cap must be positive")
        self.quiet = quiet.total_seconds()
        self.max_delay = max_delay.total_seconds()
        self.max_keys = max_keys
        self.hard_cap = hard_cap
        self._clock = clock
        self._pending: dict[Key, _Pending] = {}
        self._deferred: dict[Key, _Pending] = {}  # ``arrived`` is when to retry them
        self._last_added: float | None = None
        self._overflowed = False
        self._backlog = False  # keys were left waiting behind the last batch
        self._active_until: float | None = None  # the applier worked until max delay before
        self.coalesced_total = 0
        self.dropped_total = 0
        self.received_total = 0  # distinct keys ever buffered (a key added again counts again)
        self._handed_back = 0  # entries with ``since`` set: only then is the oldest not first
        self._taken_since: float | None = None  # when the last batch's oldest key arrived

    def __len__(self) -> int:
        return len(self._pending) + len(self._deferred)

    @property
    def overflowed(self) -> bool:
        """Keys were dropped at the hard cap: only a full reconcile covers them now."""
        return self._overflowed

    def add(self, keys: Iterable[Key], changed_at: float | None = None) -> int:
        """Buffer keys changed at production time ``changed_at``; return how many coalesced."""
        now = self._clock()
        coalesced = 0
        for key in keys:
            entry = self._pending.get(key) or self._deferred.get(key)
            if entry is not None:
                coalesced += 1
                entry.note_change(changed_at)
                continue
            if len(self) >= self.hard_cap:
                self._overflow()
                continue
            self._pending[key] = _Pending(now, changed_at)
            self.received_total += 1
        self._last_added = now
        self.coalesced_total += coalesced
        return coalesced

    def _overflow(self) -> None:
        self.dropped_total += len(self) + 1
        self._pending.clear()
        self._deferred.clear()
        self._handed_back = 0
        self._overflowed = True

    def defer(self, keys: Iterable[Key], changed_at: float | None, retry_in: float) -> None:
        """Hand back keys a batch could not write (rows held): due again ``retry_in`` from now.

        A key buffered again meanwhile is simply retried with it.
        """
        retry_at = self._clock() + retry_in
        for key in keys:
            entry = self._pending.get(key) or self._deferred.get(key)
            if entry is not None:
                entry.note_change(changed_at)
                continue
            if len(self) >= self.hard_cap:
                self._overflow()
                continue
            since = self._clock() if self._taken_since is None else self._taken_since
            self._deferred[key] = _Pending(retry_at, changed_at, since)
            self._handed_back += 1

    def _release(self) -> None:
        """Deferred keys whose retry time has come become pending, due at once."""
        if not self._deferred:
            return
        now = self._clock()
        ready = [key for key, entry in self._deferred.items() if entry.arrived <= now]
        for key in ready:
            self._pending[key] = self._deferred.pop(key)
        if ready:
            self._backlog = True

    def _next_retry(self) -> float | None:
        return min((entry.arrived for entry in self._deferred.values()), default=None)

    def acknowledge_overflow(self) -> bool:
        """Whether an overflow happened since the last call (the caller then reconciles)."""
        overflowed, self._overflowed = self._overflowed, False
        return overflowed

    def _oldest_arrival(self) -> float | None:
        for entry in self._pending.values():
            return entry.arrived
        return None

    def waiting_since(self) -> float | None:
        """Buffer clock when the oldest key still buffered first arrived (None: none is).

        Every key that arrived before it has been taken in a batch: a durable capture
        may let go of changes older than the oldest of these and the batches in flight.
        """
        if self._handed_back or self._deferred:  # rare (rows held): worth a look at every key
            entries = [*self._pending.values(), *self._deferred.values()]
            return min((entry.waiting_since for entry in entries), default=None)
        return self._oldest_arrival()

    def oldest_age(self, since: float | None = None) -> float:
        """Seconds the oldest pending key (or ``since``, an older arrival) has waited; 0 when
        nothing waits. Keys that only wait for a quiet window stay young; a stall ages them,
        however often its keys were handed back for a retry."""
        oldest = self.waiting_since()
        if since is not None and (oldest is None or since < oldest):
            oldest = since
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def due(self) -> FlushReason | None:
        """Why a batch should be taken now, or None while waiting is still right."""
        self._release()
        if not self._pending:
            return None
        if len(self._pending) >= self.max_keys:
            return "max_keys"
        if self._backlog:
            return "backlog"
        now = self._clock()
        oldest = self._oldest_arrival()
        stream_due = self._stream_deadline(oldest)
        if stream_due is not None and now >= stream_due:
            return "backlog"
        if oldest is not None and now - oldest >= self.max_delay:
            return "max_delay"
        if self._last_added is not None and now - self._last_added >= self.quiet:
            return "quiet"
        return None

    def seconds_until_due(self) -> float | None:
        """How long until ``due()`` turns true with no new keys; None when empty."""
        self._release()
        if not self._pending:
            retry_at = self._next_retry()
            return None if retry_at is None else max(0.0, retry_at - self._clock())
        if len(self._pending) >= self.max_keys or self._backlog:
            return 0.0
        now = self._clock()
        deadlines = []
        oldest = self._oldest_arrival()
        if oldest is not None:
            deadlines.append(oldest + self.max_delay)
        if self._last_added is not None:
            deadlines.append(self._last_added + self.quiet)
        stream_due = self._stream_deadline(oldest)
        if stream_due is not None:
            deadlines.append(stream_due)
        return max(0.0, min(deadlines) - now)

    def _stream_deadline(self, oldest: float | None) -> float | None:
        """When keys that arrived while a stream went on are due: one quiet window on."""
        active_until = self._active_until
        if active_until is None or oldest is None or oldest > active_until:
            return None
        return oldest + self.quiet

    def take(self, reason: FlushReason | None = None) -> Batch | None:
        """Remove and return the oldest keys (at most ``max_keys``), if a batch is due.

        ``reason="drain"`` takes a batch regardless of timing (shutdown, catch-up);
        deferred keys still wait out their retry delay, so a drain ends.
        """
        self._release()
        why = reason or self.due()
        if why is None or not self._pending:
            return None
        keys: list[Key] = []
        earliest: float | None = None
        arrived = self._oldest_arrival()
        for key, entry in self._pending.items():
            if len(keys) >= self.max_keys:
                break
            keys.append(key)
            if entry.changed_at is not None and (earliest is None or entry.changed_at < earliest):
                earliest = entry.changed_at
            if entry.since is not None:
                self._handed_back -= 1
                arrived = entry.since if arrived is None else min(arrived, entry.since)
        for key in keys:
            del self._pending[key]
        self._taken_since = arrived
        self._backlog = False  # judged again when this batch is finished
        self._active_until = None
        return Batch(tuple(keys), earliest, why, arrived)

    def batch_finished(self) -> None:
        """The applier is free again: whatever waited behind its batch is due at once.

        With nothing waiting, a key arriving within the next max delay waits one
        quiet window at most, so a steady stream that the applier happened to
        catch up with does not fall back to waiting for max delay.
        """
        self._backlog = bool(self._pending)
        self._active_until = None if self._backlog else self._clock() + self.max_delay

    def clear(self) -> int:
        """Forget every pending key (a full reconcile is about to cover them); return how many."""
        count = len(self)
        self._pending.clear()
        self._deferred.clear()
        self._handed_back = 0
        self._backlog = False
        self._active_until = None
        return count


class PartitionedBuffer:
    """Keys spread by hash over independent buffers, one per applier.

    A key always lands in the same partition, so two appliers never hold the
    same key at once: each converges its own share in its own transactions and
    no batch can overwrite a newer value another one wrote. Each partition keeps
    every rule above; the hard cap is shared out between them.
    """

    def __init__(
        self,
        partitions: int,
        *,
        quiet: timedelta,
        max_delay: timedelta,
        max_keys: int,
        hard_cap: int,
        clock: Clock = time.monotonic,
    ) -> None:
        if partitions < 1:
            raise ValueError("at least one partition is needed")
        self.max_keys = max_keys
        self.hard_cap = hard_cap
        self.clock = clock
        share = max(1, hard_cap // partitions)
        self.partitions = tuple(
            DebounceBuffer(
                quiet=quiet, max_delay=max_delay, max_keys=max_keys, hard_cap=share, clock=clock
            )
            for _ in range(partitions)
        )

    def __len__(self) -> int:
        return sum(len(partition) for partition in self.partitions)

    def add(self, keys: Iterable[Key], changed_at: float | None = None) -> int:
        """Buffer each key in its partition; return how many coalesced."""
        count = len(self.partitions)
        if count == 1:
            return self.partitions[0].add(keys, changed_at)
        shares: dict[int, list[Key]] = {}
        for key in keys:
            shares.setdefault(hash(key) % count, []).append(key)
        return sum(self.partitions[i].add(share, changed_at) for i, share in shares.items())

    def partition_of(self, key: Key) -> DebounceBuffer:
        """The partition that always holds ``key``."""
        return self.partitions[hash(key) % len(self.partitions)]

    def defer(self, keys: Iterable[Key], changed_at: float | None, retry_in: float) -> None:
        """Hand back keys to retry later, each to its own partition (see ``DebounceBuffer``)."""
        for key in keys:
            self.partition_of(key).defer((key,), changed_at, retry_in)

    def acknowledge_overflow(self) -> bool:
        """Whether any partition overflowed since the last call."""
        overflowed = [partition.acknowledge_overflow() for partition in self.partitions]
        return any(overflowed)  # every flag is reset, not just the first one found

    def clear(self) -> int:
        return sum(partition.clear() for partition in self.partitions)

    def waiting_since(self) -> float | None:
        """The oldest arrival still buffered in any partition (see ``DebounceBuffer``)."""
        times = [p.waiting_since() for p in self.partitions]
        return min((t for t in times if t is not None), default=None)

    @property
    def received_total(self) -> int:
        return sum(partition.received_total for partition in self.partitions)
