"""What the demo's live phase reports: changes made, changes seen, and latency figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from propagator.core.mapping import Key

__all__ = [
    "BulkVisible",
    "ChangeMade",
    "ChangeVisible",
    "DemoEvent",
    "LatencyFigures",
    "percentile",
]


@dataclass(frozen=True, slots=True)
class ChangeMade:
    """A production statement committed."""

    kind: Literal["single", "bulk"]
    statement: str
    rows: int
    mirrored: int
    at: float
    key: Key | None = None
    old: Decimal | None = None
    new: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ChangeVisible:
    """A changed production value became visible in the sandbox."""

    kind: Literal["single", "bulk"]
    key: Key
    old: Decimal | None
    new: Decimal
    latency: float
    at: float


@dataclass(frozen=True, slots=True)
class BulkVisible:
    """Every mirrored row of a bulk statement is visible in the sandbox."""

    rows: int
    p50: float
    max: float
    at: float


DemoEvent = ChangeMade | ChangeVisible | BulkVisible


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class LatencyFigures:
    """Count, p50, p99 and maximum of a set of latencies, in seconds."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencyFigures:
        ordered = sorted(values)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(ordered), percentile(ordered, 50), percentile(ordered, 99), ordered[-1])
