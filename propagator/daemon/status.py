"""What the daemon knows about itself, as plain values for ``/status``, logs and readiness."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["BatchSummary", "DaemonState", "ReconcileSummary", "Role", "now_iso"]

Role = Literal["starting", "leader", "standby"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """One applied event batch, as ``batch_applied`` logs it and ``/status`` shows it."""

    keys: int
    updated: int
    failed: int
    reason: str
    lag_seconds: float | None
    duration_seconds: float
    finished_at: str = field(default_factory=now_iso)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReconcileSummary:
    """One finished full reconcile (catch-up, periodic or manual)."""

    source: str
    reason: str
    method: str
    production_rows: int
    sandbox_rows: int
    differences: int
    updated: int
    failed: int
    duration_seconds: float
    finished_at: str = field(default_factory=now_iso)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DaemonState:
    """The mutable facts every part of the daemon reports into."""

    role: Role = "starting"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    catchup_done: bool = False
    last_batch: BatchSummary | None = None
    last_reconcile: ReconcileSummary | None = None
    last_lag: float | None = None
    last_error: str | None = None
    crashed: str | None = None
    # Called (on the daemon's loop) after each commit that changed the sandbox: the
    # webhook senders of its history look at once instead of at their next poll.
    on_committed: list[Callable[[], None]] = field(default_factory=list)

    def committed(self) -> None:
        for listener in self.on_committed:
            listener()

    def uptime_seconds(self) -> float:
        return round((datetime.now(UTC) - self.started_at).total_seconds(), 3)
