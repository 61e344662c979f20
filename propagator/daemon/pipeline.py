"""One mapping's pipeline: captured keys → debounce buffer → appliers → sandbox.

Keys are shared out by hash between the appliers (lanes), so two never hold
one key; while one waits for a server, another reads, plans or writes. Lane 0
also runs every full reconcile, alone: the other lanes finish their batch and
hold back until it is done, so a reconcile never runs beside a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from propagator.adapters.leader import LeadershipLostError
from propagator.core.debounce import PartitionedBuffer
from propagator.core.payload import Change, MalformedNotification, Resync
from propagator.daemon.capture import Captured
from propagator.daemon.jobs import WriteJobs
from propagator.daemon.leadership import Leadership
from propagator.daemon.requests import ReconcileJob, ReconcileRequests
from propagator.daemon.retry import Stopping
from propagator.daemon.status import DaemonState, ReconcileSummary
from propagator.daemon.writers import Lane
from propagator.errors import ActionRefusedError, Refusal
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import MappingMetrics

__all__ = ["ManualWaiter", "Pipeline"]

_log = get_logger("propagator.daemon")
_TICK_SECONDS = 1.0

ManualWaiter = asyncio.Future[dict[str, Any]]


class Pipeline:
    """Buffers captured keys and runs the lanes that write them, one mapping's worth."""

    def __init__(
        self,
        buffer: PartitionedBuffer,
        lanes: Sequence[Lane],
        *,
        state: DaemonState,
        metrics: MappingMetrics,
        leadership: Leadership,
        jobs: WriteJobs,
        requests: ReconcileRequests[ManualWaiter],
        stop: asyncio.Event,
    ) -> None:
        self.buffer = buffer
        self.lanes = tuple(lanes)
        self.state = state
        self.metrics = metrics
        self.leadership = leadership
        self.jobs = jobs
        self.requests = requests
        self.stop = stop
        self.capture_connected: Callable[[], bool] = lambda: False
        # Told of each finished reconcile with how many keys were notified before or during it.
        self.on_reconciled: Callable[[ReconcileJob[Any], ReconcileSummary, int], None] = (
            lambda _job, _summary, _notified: None
        )
        # Reads the sandbox's identity now, asking for a refresh if it changed (None: not watched).
        self.check_refresh: Callable[[], Awaitable[bool]] | None = None
        # Buffer clock of the first full reconcile owed for keys let go (overflow, refusal,
        # resync, catch-up): a durable capture keeps what came after it until it is done.
        self._owed_since: float | None = None
        # A durable capture (a slot) keeps every change until told it is written:
        # no catch-up on takeover, and a change of role (``generation``) makes it re-read.
        self.durable_capture = False
        self.generation = 0
        # Why changes may have been missed, told while not leading: owed once leadership comes.
        self._missed_before_leading: str | None = None

    @property
    def in_flight_keys(self) -> int:
        return sum(len(lane.in_flight.keys) for lane in self.lanes if lane.in_flight)

    def poke(self) -> None:
        """Wake every lane to look at its work again."""
        for lane in self.lanes:
            if lane.wake is not None:
                lane.wake.set()

    # Requests for full reconciles.

    def unsettled_since(self) -> float | None:
        """Buffer clock of the oldest change not yet in the sandbox (None: every one is).

        Changes captured before it were all written (or found equal) and committed:
        a durable capture source may forget them.
        """
        times = [self.buffer.waiting_since(), self._owed_since]
        times += [lane.in_flight.arrived for lane in self.lanes if lane.in_flight is not None]
        if self.requests.running is not None and self._owed_since is None:
            times.append(self.buffer.clock())  # a reconcile runs: nothing settles meanwhile
        return min((t for t in times if t is not None), default=None)

    def _owe_reconcile(self) -> None:
        if self._owed_since is None:
            self._owed_since = self.buffer.clock()

    def request_catchup(self, why: str) -> None:
        self._owe_reconcile()
        self.requests.want_catchup(why)
        self.state.catchup_done = False
        _log.info("catchup_requested", reason=why)
        self.poke()

    def want_reconcile(self, why: str) -> None:
        self._owe_reconcile()
        self.requests.want_reconcile(why)
        self.poke()

    def want_refresh(self, why: str) -> None:
        self._owe_reconcile()
        self.requests.want_refresh(why)
        self.poke()

    def on_capture_connected(self, missed: str | None = "listener connected") -> None:
        """The capture (re)connected; ``missed`` says why changes may have been missed
        meanwhile (None: a durable capture kept them all, no catch-up is owed)."""
        if missed is None:
            return
        if self.leadership.is_leader:
            self.request_catchup(missed)
        else:
            self._missed_before_leading = missed

    def on_promoted(self) -> None:
        self.buffer.clear()
        self.generation += 1
        missed, self._missed_before_leading = self._missed_before_leading, None
        if self.durable_capture and missed is not None:
            self.request_catchup(missed)  # e.g. a new slot read first while not yet leading
        elif self.durable_capture:
            self.state.catchup_done = True  # the capture still holds every unwritten change
        elif self.capture_connected():
            self.request_catchup("leadership acquired")

    def on_demoted(self, why: str) -> None:
        self.generation += 1
        if self.state.role == "leader":
            _log.error("leadership_lost", reason=why, dropped_keys=len(self.buffer))
        self.buffer.clear()
        for lane in self.lanes:
            lane.in_flight = None
        self.metrics.debounce_buffer_keys.set(0)

    # Intake: the hot path, once per batch of notifications.

    def on_captured(self, items: Captured) -> None:
        """Buffer the keys of a batch of notifications; metrics and wake-ups once per batch."""
        self.metrics.notifications_received.inc(len(items))
        leader = self.leadership.is_leader
        buffer = self.buffer
        before = [len(lane.buffer) for lane in self.lanes]
        coalesced = 0
        for item in items:
            if isinstance(item, Change):
                if leader:  # a standby applies nothing; its catch-up on takeover covers these
                    coalesced += buffer.add(item.keys, item.changed_at)
            elif isinstance(item, MalformedNotification):
                self.metrics.record_malformed(item.reason)
                _log.warning("notification_malformed", reason=item.reason, detail=item.detail[:200])
            elif isinstance(item, Resync) and leader:
                _log.info("resync_received", changed_at=item.changed_at)
                self.want_reconcile("resync notification")
            # Another replica's heartbeat on the shared channel needs nothing.
        if coalesced:
            self.metrics.keys_coalesced.inc(coalesced)
        if buffer.acknowledge_overflow():
            _log.warning("debounce_overflow", hard_cap=buffer.hard_cap)
            self.want_reconcile("debounce buffer overflow")
        self.metrics.debounce_buffer_keys.set(len(buffer))
        # An idle applier sleeps until its buffer's next deadline, which new keys can
        # only bring forward when they are the first ones or fill a batch.
        for lane, pending_before in zip(self.lanes, before, strict=True):
            pending = len(lane.buffer)
            if pending and (not pending_before or pending >= buffer.max_keys):
                lane.wake.set()

    # The lanes: the only writers.

    async def run_lane(self, lane: Lane) -> None:
        while True:
            lane.wake.clear()
            if self.stop.is_set():
                await self.drain(lane)
                return
            if not self.leadership.is_leader:
                if lane.number == 0:
                    self.refuse_waiters(f"this instance is now a {self.state.role}")
                await self._idle(lane, _TICK_SECONDS)
                continue
            if self._must_wait_for_reconcile(lane):
                await self._idle(lane, _TICK_SECONDS)
                continue
            try:
                if await self._work_once(lane):
                    # Free again: what gathered meanwhile goes next, without waiting.
                    lane.buffer.batch_finished()
                    self.poke()  # lane 0 may be waiting for the others to finish
                    continue
            except Stopping:
                continue
            except LeadershipLostError as error:
                await self.lost_fence(error)
                continue
            due_in = lane.buffer.seconds_until_due()
            await self._idle(lane, _TICK_SECONDS if due_in is None else due_in)

    def _must_wait_for_reconcile(self, lane: Lane) -> bool:
        """A full reconcile is wanted or running: lane 0 runs it once every other
        batch is finished; the others wait until it is done."""
        if not self.requests.exclusive or lane.in_flight is not None:
            return False
        return lane.number != 0 or any(other.in_flight for other in self.lanes[1:])

    async def _work_once(self, lane: Lane) -> bool:
        """Do the most urgent piece of writing, if any is due; whether there was one."""
        if self.requests.exclusive and lane.in_flight is None:
            await self._run_reconcile(lane)
            return True
        if lane.in_flight is None:
            lane.in_flight = lane.buffer.take()
            self.metrics.debounce_buffer_keys.set(len(self.buffer))
        if lane.in_flight is not None:
            await self.jobs.apply_batch(lane, lane.in_flight)
            return True
        return False

    async def _run_reconcile(self, lane: Lane) -> None:
        if self.check_refresh is not None and not self.requests.running:
            # A catch-up after a lost sandbox, or a reconcile after a refused batch, is
            # often a refresh seen from the other side: recorded as one if so.
            await self.check_refresh()
        job = self.requests.start()
        if job is None:
            return
        notified = len(self.buffer) - self.buffer.received_total  # plus what arrives meanwhile
        succeeded = False
        try:
            summary = await self.jobs.reconcile(job, lane.writer)
            succeeded = True
        except BaseException as error:
            _answer(job.waiters, error=f"the reconcile did not finish: {error}")
            raise
        finally:
            self.requests.finish(job, succeeded=succeeded, still_leader=self.leadership.is_leader)
            self.poke()  # the other lanes resume
        _answer(job.waiters, result=summary.as_dict())
        if not self.requests.pending:
            self._owed_since = None  # what was let go before this reconcile began is covered
        self.on_reconciled(job, summary, notified + self.buffer.received_total)
        if job.covers_catchup and not self.requests.catchup_wanted:
            self.state.catchup_done = True

    async def _idle(self, lane: Lane, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lane.wake.wait(), timeout=max(0.001, seconds))

    async def lost_fence(self, error: LeadershipLostError) -> None:
        _log.error("write_refused_not_leader", error=str(error))
        await self.leadership.lock.release()
        self.leadership.demote(str(error))

    async def drain(self, lane: Lane) -> None:
        """On stop: apply what is in flight and pending, once, within the shutdown budget."""
        if not self.leadership.is_leader:
            return
        batches = 0
        while self.leadership.is_leader:
            batch = lane.in_flight or lane.buffer.take("drain")
            if batch is None:
                break
            lane.in_flight = batch
            try:
                await self.jobs.apply_batch(lane, batch)
            except Stopping:
                _log.warning("drain_incomplete", pending_keys=len(lane.buffer) + len(batch.keys))
                return
            except LeadershipLostError as error:
                await self.lost_fence(error)
                return
            batches += 1
        _log.info("drain_finished", batches=batches, applier=lane.number)

    async def drain_late_keys(self) -> None:
        """After the lanes stopped: apply what the capture source handed over last."""
        if len(self.buffer) and self.leadership.is_leader:
            for lane in self.lanes:
                await self.drain(lane)

    # Reconcile on request (POST /reconcile), serialized with every other write by lane 0.

    async def reconcile_now(self) -> dict[str, Any]:
        """Have lane 0 run a full reconcile (source ``manual``) next; return its summary.

        Requests arriving while one waits share it: one reconcile answers them all.
        """
        if self.stop.is_set():
            raise ActionRefusedError("the daemon is stopping", Refusal.STOPPING)
        if not self.leadership.is_leader:
            raise ActionRefusedError(
                f"this instance is a {self.state.role}; ask the leader", Refusal.NOT_LEADER
            )
        done: ManualWaiter = asyncio.get_running_loop().create_future()
        self.requests.add_waiter(done)
        self.poke()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((done, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not done.done():
            done.cancel()
            raise ActionRefusedError("the daemon is stopping", Refusal.STOPPING)
        return done.result()

    def refuse_waiters(self, why: str) -> None:
        _answer(self.requests.take_waiters(), error=why, reason=Refusal.NOT_LEADER)


def _answer(
    waiters: Sequence[ManualWaiter],
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    reason: Refusal = Refusal.DID_NOT_FINISH,
) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is not None:
            waiter.set_exception(ActionRefusedError(error, reason))
        else:
            waiter.set_result(dict(result or {}))
