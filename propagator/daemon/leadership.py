"""Leadership: one writer among replicas, elected by an advisory lock on the sandbox.

The leader re-checks its lock every ``standby_poll_interval``; a standby tries
to take it as often. Every write also checks, inside its own transaction, that
the session holding the lock is still ours (the lock's ``fence``), so a leader
that lost its lock cannot write even once more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from propagator.daemon.retry import Retrier, Stopping
from propagator.daemon.status import DaemonState, Role
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import MappingMetrics

__all__ = ["Fence", "LeaderLockPort", "Leadership"]

_log = get_logger("propagator.daemon")

Fence = Callable[[Any], None]
"""Raises ``LeadershipLostError`` inside a write's transaction unless the lock is still ours."""


class LeaderLockPort(Protocol):
    """What the daemon needs of its leader lock."""

    lock_id: int
    held: bool
    backend_pid: int | None

    @property
    def connected(self) -> bool: ...

    async def try_acquire(self) -> bool: ...

    async def still_held(self) -> bool: ...

    async def release(self) -> None: ...

    def fence(self) -> Fence: ...


class Leadership:
    """Takes, keeps and gives up the leader lock; tells the pipeline when the role changes."""

    def __init__(
        self,
        lock: LeaderLockPort,
        state: DaemonState,
        metrics: MappingMetrics,
        retrier: Retrier,
        *,
        poll_seconds: float,
        on_promoted: Callable[[], None],
        on_demoted: Callable[[str], None],
    ) -> None:
        self.lock = lock
        self.state = state
        self.metrics = metrics
        self.retrier = retrier
        self.poll_seconds = poll_seconds
        self._on_promoted = on_promoted
        self._on_demoted = on_demoted

    @property
    def is_leader(self) -> bool:
        return self.state.role == "leader" and self.lock.held

    async def run(
        self, stopping: Callable[[], bool], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        announced: Role | None = None
        while not stopping():
            if self.state.role == "leader":
                if not await self.lock.still_held():
                    self.demote("the leader lock connection was lost")
                    announced = None
                    continue
            else:
                try:
                    acquired = await self.retrier.run(
                        "taking the leader lock",
                        self.lock.try_acquire,
                        on_failure=lambda _e: self.metrics.set_database_connected("sandbox", False),
                    )
                except Stopping:
                    return
                self.metrics.set_database_connected("sandbox", True)
                announced = self._settle(acquired, announced)
            self.metrics.set_database_connected("sandbox", self.lock.connected)
            await sleep(self.poll_seconds)

    def _settle(self, acquired: bool, announced: Role | None) -> Role | None:
        if acquired:
            self.promote()
            return "leader"
        if announced != "standby":
            self.state.role = "standby"
            self.metrics.leader.set(0)
            _log.info("standby", leader_lock_id=self.lock.lock_id)
            return "standby"
        return announced

    def promote(self) -> None:
        self.state.role = "leader"
        self.metrics.leader.set(1)
        self.state.catchup_done = False
        _log.info("leadership_acquired", leader_lock_id=self.lock.lock_id)
        self._on_promoted()

    def demote(self, why: str) -> None:
        """Become a standby: nothing more is written until the lock is ours again."""
        self._on_demoted(why)
        self.state.role = "standby"
        self.metrics.leader.set(0)
        self.state.catchup_done = False

    async def release(self) -> None:
        await self.lock.release()
        self.metrics.leader.set(0)
