"""Production written the way an application would, and the sandbox watched for the result.

Latency is measured from the outside, the way a user would see it: from the
moment a production UPDATE has committed to the first sandbox read that shows
the new value.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from propagator.core.mapping import Key
from propagator.core.values import values_equal
from propagator.demo.data import BULK_STAGE, DemoData
from propagator.demo.events import BulkVisible, ChangeVisible, DemoEvent, percentile
from propagator.demo.servers import Connection

__all__ = ["ChangeStream", "Propagation"]


class ChangeStream:
    """Writes production the way an application would: single-row UPDATEs and one bulk UPDATE."""

    def __init__(self, conn: Connection, data: DemoData, *, seed: int = 7) -> None:
        self.conn = conn
        self.values: dict[Key, Decimal] = {(r[0], r[1]): r[2] for r in data.production}
        self.stages: dict[Key, str] = {(r[0], r[1]): r[4] for r in data.production}
        self.mirrored = data.mirrored_keys
        self._candidates = sorted(self.mirrored)
        self._rng = random.Random(seed)  # noqa: S311 - sample data, not a secret

    def single(self, busy: Iterable[Key]) -> tuple[Key, Decimal, Decimal]:
        """Change one mirrored job's fab_order (not one still on its way)."""
        busy = set(busy)
        key = self._rng.choice(self._candidates)
        while key in busy:
            key = self._rng.choice(self._candidates)
        old = self.values[key]
        new = old + Decimal(self._rng.choice((-30, -20, -10, 10, 20, 30)))
        if new <= 0:
            new = old + Decimal(10)
        self.conn.execute(
            "UPDATE public.jobs SET fab_order = %s, updated_at = now() "
            "WHERE job = %s AND release = %s",
            (new, key[0], key[1]),
        )
        self.values[key] = new
        return key, old, new

    @property
    def bulk_statement(self) -> str:
        return f"UPDATE jobs SET fab_order = fab_order + 25 WHERE stage = '{BULK_STAGE}'"

    def bulk(self) -> list[tuple[Key, Decimal, Decimal]]:
        """One statement over every job in one stage: hundreds of rows, one notification set."""
        rows = self.conn.execute(
            "UPDATE public.jobs SET fab_order = fab_order + 25, updated_at = now() "
            "WHERE stage = %s RETURNING job, release, fab_order",
            (BULK_STAGE,),
        ).fetchall()
        changed: list[tuple[Key, Decimal, Decimal]] = []
        for job, release, fab_order in rows:
            key = (job, release)
            changed.append((key, self.values[key], fab_order))
            self.values[key] = fab_order
        return changed


@dataclass(slots=True)
class _Expected:
    kind: Literal["single", "bulk"]
    old: Decimal | None
    new: Decimal
    committed_at: float


class Propagation:
    """Watches the sandbox for expected values and measures commit → visible latency.

    The watcher polls only the keys still on their way; a key's time of
    visibility is the start of the first read that shows its new value (the
    read's snapshot is taken then), so figures are upper bounds within one
    poll interval.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: dict[Key, _Expected] = {}
        self.superseded = 0
        self.bulk_pending = 0
        self.bulk_latencies: list[float] = []

    def expect(
        self,
        key: Key,
        old: Decimal | None,
        new: Decimal,
        committed_at: float,
        kind: Literal["single", "bulk"],
    ) -> None:
        if key in self.pending:
            self.superseded += 1  # a newer value replaces one not yet seen: measure the newer
            if self.pending[key].kind == "bulk":
                self.bulk_pending -= 1
        self.pending[key] = _Expected(kind, old, new, committed_at)
        if kind == "bulk":
            self.bulk_pending += 1

    def poll(self) -> list[DemoEvent]:
        """Read the pending keys once; return what became visible."""
        if not self.pending:
            return []
        keys = list(self.pending)
        read_at = time.perf_counter()
        rows = self.conn.execute(
            "SELECT job, release, fab_order FROM public.jobs "
            "WHERE (job, release) IN (SELECT * FROM unnest(%s::int[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        events: list[DemoEvent] = []
        now = time.perf_counter()
        for job, release, fab_order in rows:
            key = (job, release)
            expected = self.pending.get(key)
            if expected is None or not values_equal(fab_order, expected.new):
                continue
            del self.pending[key]
            latency = max(0.0, read_at - expected.committed_at)
            events.append(
                ChangeVisible(expected.kind, key, expected.old, expected.new, latency, now)
            )
            if expected.kind == "bulk":
                self.bulk_pending -= 1
                self.bulk_latencies.append(latency)
        if self.bulk_latencies and self.bulk_pending == 0:
            ordered = sorted(self.bulk_latencies)
            events.append(BulkVisible(len(ordered), percentile(ordered, 50), ordered[-1], now))
            self.bulk_latencies = []
        return events
