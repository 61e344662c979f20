"""Which full reconcile the writers owe, and who is waiting for it: pure bookkeeping.

Four things ask for a full compare-and-converge: a sandbox refreshed under the
daemon (``refresh``), a (re)connect or takeover (``catchup``), a caller of
``POST /reconcile`` (``manual``), and everything else (``reconcile``: the
schedule, a resync notification, an overflowing buffer, a refused batch). They
run one at a time, never beside a batch, in that order of urgency; requests
that arrive while one runs are kept and run once afterwards, however many there
were. A refresh also answers a catch-up or reconcile asked for meanwhile: one
full reconcile covers them all, and its rows are recorded as the refresh they
repair. No clock, no I/O, no event loop: the rules are tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["ReconcileJob", "ReconcileRequests", "ReconcileSource"]

ReconcileSource = Literal["catchup", "reconcile", "manual", "refresh"]
W = TypeVar("W")


@dataclass(frozen=True, slots=True)
class ReconcileJob(Generic[W]):
    """One full reconcile to run: why, and the manual callers it answers."""

    source: ReconcileSource
    reason: str
    waiters: tuple[W, ...] = ()
    catchup: bool = False  # a refresh that also stands for the catch-up asked for

    @property
    def covers_catchup(self) -> bool:
        return self.source == "catchup" or self.catchup


class ReconcileRequests(Generic[W]):
    """Outstanding reconcile requests; ``W`` is whatever a manual caller waits on."""

    def __init__(self) -> None:
        self._catchup: str | None = None
        self._reconcile: str | None = None
        self._refresh: str | None = None
        self._waiters: list[W] = []
        self.running: ReconcileJob[W] | None = None

    @property
    def catchup_wanted(self) -> bool:
        return self._catchup is not None

    @property
    def pending(self) -> bool:
        """A reconcile is asked for and not started yet."""
        return bool(
            self._catchup is not None
            or self._waiters
            or self._reconcile is not None
            or self._refresh is not None
        )

    @property
    def exclusive(self) -> bool:
        """Batches must hold back: a reconcile is asked for or running."""
        return self.running is not None or self.pending

    def want_catchup(self, reason: str) -> None:
        self._catchup = reason

    def want_reconcile(self, reason: str) -> None:
        """Ask for a full reconcile; the first reason given is the one reported."""
        if self._reconcile is None:
            self._reconcile = reason

    def want_refresh(self, reason: str) -> None:
        """The sandbox was refreshed: a full reconcile before anything else."""
        if self._refresh is None:
            self._refresh = reason

    def add_waiter(self, waiter: W) -> None:
        self._waiters.append(waiter)

    def start(self) -> ReconcileJob[W] | None:
        """The most urgent job, now running; None when nothing is asked for."""
        job: ReconcileJob[W] | None = None
        if self._refresh is not None:
            job = ReconcileJob("refresh", self._refresh, catchup=self._catchup is not None)
            self._refresh = self._catchup = self._reconcile = None
        elif self._catchup is not None:
            job = ReconcileJob("catchup", self._catchup)
            self._catchup = None
        elif self._waiters:
            job = ReconcileJob("manual", "requested over HTTP", tuple(self._waiters))
            self._waiters = []
        elif self._reconcile is not None:
            job = ReconcileJob("reconcile", self._reconcile)
            self._reconcile = None
        self.running = job
        return job

    def finish(self, job: ReconcileJob[W], *, succeeded: bool, still_leader: bool) -> None:
        """Mark ``job`` done; a failed catch-up or reconcile is asked for again while leader.

        A failed manual reconcile is not repeated: its callers are told instead.
        """
        self.running = None
        if succeeded or not still_leader:
            return
        if job.covers_catchup and self._catchup is None:
            self._catchup = job.reason
        if job.source == "refresh" and self._refresh is None:
            self._refresh = job.reason
        elif job.source == "reconcile" and self._reconcile is None:
            self._reconcile = job.reason

    def take_waiters(self) -> list[W]:
        """Every manual caller still waiting (to refuse them: a standby cannot reconcile)."""
        waiters, self._waiters = self._waiters, []
        return waiters
