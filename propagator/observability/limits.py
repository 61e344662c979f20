"""Connection slots for the HTTP server: a total limit, a limit per client, eviction.

A client that opens connections and sends nothing (or a byte now and then) must
not lock out the probes. Each connection takes a slot when it is accepted and is
*waiting* until its whole request has arrived. When a limit is reached, the new
connection takes the place of the oldest waiting one (of the same client, for
the per-client limit): a prompt client, such as a liveness probe, always gets
in, and idle or slow-loris connections only ever push each other out. A waiting
connection whose whole request has already arrived, unread (a probe accepted in
the same burst as a flood), is not waiting on its client and is passed over.
Only when no slot can be taken is the newcomer turned away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConnectionLimits", "Slot"]


@dataclass(eq=False, slots=True)
class Slot:
    """One accepted connection; ``close`` aborts it when it is evicted.

    ``request_arrived`` tells whether the client's whole request is already here,
    unread: such a connection is never evicted.
    """

    client: str
    close: Callable[[], None]
    request_arrived: Callable[[], bool] = lambda: False
    waiting: bool = True
    released: bool = False


class ConnectionLimits:
    """At most ``total`` open connections and ``per_client`` from one address."""

    def __init__(
        self, total: int, per_client: int, on_evict: Callable[[], None] | None = None
    ) -> None:
        if total < 1 or per_client < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_client = per_client
        self._on_evict = on_evict
        self._open: set[Slot] = set()
        self._waiting: dict[Slot, None] = {}  # insertion order: oldest first
        self._per_client: Counter[str] = Counter()
        self.evicted = 0

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def clients(self) -> int:
        return len(self._per_client)

    def admit(
        self,
        client: str,
        close: Callable[[], None],
        request_arrived: Callable[[], bool] | None = None,
    ) -> Slot | None:
        """A slot for a new connection from ``client``, or None when every slot is busy.

        A full limit is made room in by evicting the oldest waiting connection
        (``close`` is called on it); a connection being served is never evicted.
        """
        if self._per_client[client] >= self.per_client and not self._evict(client):
            return None
        if len(self._open) >= self.total and not self._evict(None):
            return None
        slot = (
            Slot(client, close) if request_arrived is None else Slot(client, close, request_arrived)
        )
        self._open.add(slot)
        self._waiting[slot] = None
        self._per_client[client] += 1
        return slot

    def serving(self, slot: Slot) -> None:
        """The whole request has arrived: the slot is no longer evictable."""
        slot.waiting = False
        self._waiting.pop(slot, None)

    def release(self, slot: Slot) -> None:
        """The connection is closed (idempotent: an evicted slot is already released)."""
        if slot.released:
            return
        slot.released = True
        self._open.discard(slot)
        self._waiting.pop(slot, None)
        self._per_client[slot.client] -= 1
        if self._per_client[slot.client] <= 0:
            del self._per_client[slot.client]

    def _evict(self, client: str | None) -> bool:
        victim = next(
            (
                s
                for s in self._waiting
                if (client is None or s.client == client) and not s.request_arrived()
            ),
            None,
        )
        if victim is None:
            return False
        self.release(victim)
        self.evicted += 1
        victim.close()
        if self._on_evict is not None:
            self._on_evict()
        return True
