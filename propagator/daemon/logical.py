"""Logical capture: a pgoutput slot streamed by the leader, let go only past what the sandbox holds.

The slot keeps every change while the daemon is down, so a restart needs no
catch-up reconcile. Each read is stamped when its keys are in the buffers; the
slot moves past a read only once every key buffered up to that stamp has been
written (the pipelines' ``unsettled_since``) and no owed reconcile is pending:
at least once, the idempotent apply making repeats harmless. Only a leader of
every mapping the slot serves streams it; a change of role restarts the stream
from where the slot was let go. A slot that is missing or was invalidated (its
WAL removed) is created again and answered by a full reconcile, logged and counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from propagator.adapters.slot_reader import SlotGoneError, SlotReader, format_lsn, parse_lsn
from propagator.adapters.slot_stream import Keepalive, SlotStream
from propagator.core.logical_changes import ChangeCollector, WatchedRelation
from propagator.core.payload import Notification, Resync
from propagator.core.pgoutput import Begin, MalformedMessage, decode
from propagator.daemon.capture import Captured
from propagator.errors import PermanentError, TransientError
from propagator.observability.logging import get_logger
from propagator.services.capture_plan import server_problems
from propagator.settings import Settings

__all__ = ["CaptureProgress", "LogicalCapture", "watched_relations"]

_log = get_logger("propagator.daemon")
_WAIT_SECONDS = 0.05  # a pause while the stream may not be read
_MESSAGES_PER_RECEIVE = 50_000  # hand over at least this often, however busy the stream
# What commits meanwhile is read together: fewer reads, each checked at once (see
# ``_wait_visible``), for a delay well inside the debounce's quiet window.
_GATHER_SECONDS = 0.02
_VISIBLE_PAUSE_SECONDS = 0.002
_STATUS_SECONDS = 10.0  # the server hears from us at least this often (wal_sender_timeout)


class CaptureProgress(Protocol):
    """What the capture asks of the pipelines it feeds."""

    def clock(self) -> float: ...

    def all_leading(self) -> bool:
        """This process leads every mapping the slot serves (else it must not read it)."""

    def unsettled_since(self) -> float | None:
        """Clock of the oldest captured change not yet in the sandbox (None: none)."""

    def generation(self) -> int:
        """Changes whenever a mapping's role changes: what was read must be read again."""

    def backlog(self) -> int:
        """Keys buffered and not written yet: reading pauses while too many wait."""


@dataclass(slots=True)
class _Read:
    upto: int  # every change before this WAL position was handed over
    stamp: float | None = None  # clock once its keys were buffered


def watched_relations(mappings: Sequence[Settings]) -> list[WatchedRelation]:
    """The production tables of ``mappings``, one each, with their channel and key."""
    seen: dict[tuple[str | None, str], WatchedRelation] = {}
    for settings in mappings:
        name = settings.production_table_name
        seen.setdefault(
            (name.schema, name.name),
            WatchedRelation(name.schema, name.name, settings.channel, settings.key_columns),
        )
    return list(seen.values())


class LogicalCapture:
    """A capture source (``daemon.capture.CaptureSource``) streaming a logical slot."""

    def __init__(
        self,
        reader: SlotReader,
        stream: SlotStream,
        watched: Sequence[WatchedRelation],
        *,
        max_keys: int,
        state_interval: float,
        silence_limit: float,
    ) -> None:
        self.reader = reader
        self.stream = stream
        self.watched = tuple(watched)
        self.max_keys = max_keys
        self.state_interval = state_interval
        self.silence_limit = silence_limit
        self.progress: CaptureProgress | None = None
        # Told the WAL the slot retains (None: no slot), and of each slot recreated.
        self.on_slot: Callable[[int | None], None] = lambda _retained: None
        self.on_recreated: Callable[[], None] = lambda: None
        self._missed: str | None = None
        self._reads: deque[_Read] = deque()
        self._confirmed = 0  # the slot's position: everything before it is in the sandbox
        self._told = 0  # the position last sent to the server
        self._generation: int | None = None
        self._last_status = 0.0
        self._last_read = 0.0
        self._last_state = 0.0
        self._last_seen = time.monotonic()
        self._collector = ChangeCollector(self.watched, max_keys=max_keys)
        self._in_transaction = False
        self._retained: int | None = None
        self._checked = False

    def follow(self, progress: CaptureProgress) -> None:
        self.progress = progress

    # What the capture loop reads.

    @property
    def connected(self) -> bool:
        """Connected and past the checks of ``connect`` (publication, slot)."""
        return self._checked and self.reader.connected

    @property
    def backend_pid(self) -> int | None:
        return self.stream.backend_pid or self.reader.backend_pid

    @property
    def heartbeat_age(self) -> float:
        return max(0.0, time.monotonic() - self._last_seen) if self.connected else 0.0

    @property
    def queue_usage(self) -> float | None:
        return None

    @property
    def missed(self) -> str | None:
        return self._missed

    def describe(self) -> dict[str, Any]:
        """The capture's part of ``/status``: the slot, how far it was let go, what it retains."""
        return {
            "kind": "logical",
            "slot": self.reader.slot,
            "publication": self.reader.publication,
            "streaming": self.stream.open,
            "confirmed_lsn": format_lsn(self._confirmed) if self._confirmed else None,
            "retained_wal_bytes": self._retained,
        }

    # Connecting: the publication checked, the slot found, created or recreated.

    async def connect(self) -> None:
        self._checked = False
        await self.stream.close()
        await self.reader.connect()
        facts = await self.reader.server_facts()
        for problem in server_problems(facts):
            raise PermanentError(problem)
        await self._check_publication()
        state = await self.reader.state()
        self._missed = None
        if state is None:
            self._confirmed = await self.reader.create()
            self._missed = f"replication slot {self.reader.slot} created"
            _log.warning("slot_created", slot=self.reader.slot, reason="missing")
        elif state.wal_status == "lost" or state.confirmed_flush_lsn is None:
            _log.error(
                "slot_invalidated",
                slot=self.reader.slot,
                wal_status=state.wal_status,
                action="recreating it, then a full reconcile",
            )
            await self.reader.drop()
            self._confirmed = await self.reader.create()
            self._missed = f"replication slot {self.reader.slot} was invalidated and recreated"
            self.on_recreated()
        elif state.plugin != "pgoutput" or state.slot_type != "logical":
            raise PermanentError(
                f"production replication slot {self.reader.slot!r} is not a pgoutput logical "
                "slot: drop it or set logical_slot to another name"
            )
        else:
            self._confirmed = parse_lsn(state.confirmed_flush_lsn)
            if await self.reader.ever_read(facts.server_version_num):
                _log.info(
                    "slot_resumed", slot=self.reader.slot, confirmed=state.confirmed_flush_lsn
                )
            else:  # installed anew: what changed before it was created is not in it
                self._missed = f"replication slot {self.reader.slot} not read before"
                _log.info("slot_first_read", slot=self.reader.slot, action="a catch-up reconcile")
        self._told = self._confirmed
        self._forget()
        self._last_seen = time.monotonic()
        self._checked = True

    async def _check_publication(self) -> None:
        publication = self.reader.publication
        tables = await self.reader.published_tables()
        if tables is None:
            raise PermanentError(
                f"production publication {publication!r} is missing: run propagator capture install"
            )
        for table in self.watched:
            if not any(name == table.name and table.schema in (None, s) for s, name in tables):
                raise PermanentError(
                    f"production publication {publication!r} does not publish {table.name}: "
                    "run propagator capture install"
                )
        for schema, name in tables:
            if not any(t.name == name and t.schema in (None, schema) for t in self.watched):
                raise PermanentError(
                    f"production publication {publication!r} also publishes {schema}.{name}, "
                    "which this daemon does not serve: give each deployment its own "
                    "logical_slot and logical_publication"
                )

    def _forget(self) -> None:
        """Drop what was handed over but not let go: the next stream sends it again."""
        self._reads.clear()
        self._collector = ChangeCollector(self.watched, max_keys=self.max_keys)
        self._in_transaction = False
        self._generation = None if self.progress is None else self.progress.generation()

    # Streaming.

    async def receive(self, timeout: float) -> Captured:
        deadline = time.monotonic() + timeout
        while True:
            await self._settle()
            if await self._may_read():
                captured = await self._read(max(0.0, deadline - time.monotonic()))
                if captured:
                    return captured
            elif timeout > 0:
                await asyncio.sleep(min(_WAIT_SECONDS, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return []

    async def _may_read(self) -> bool:
        """Only a leader of every mapping the slot serves streams it; a change of role (or a
        full buffer) stops the stream, and the next one starts where the slot was let go."""
        if self.progress is not None:
            leading = self.progress.all_leading()
            if not leading or self._generation != self.progress.generation():
                if self.stream.open:
                    await self.stream.close()
                self._forget()
                if not leading:
                    return False
            if self.progress.backlog() >= self.max_keys // 2:
                return False  # the server waits: no buffer overflow, no reconcile
        if not self.stream.open:
            await self.stream.start()
            self._last_status = time.monotonic()
        return True

    async def _read(self, timeout: float) -> list[Notification]:
        # A busy stream always has something waiting: read it at most every gather interval.
        await asyncio.sleep(max(0.0, self._last_read + _GATHER_SECONDS - time.monotonic()))
        messages = await self.stream.receive(timeout, _MESSAGES_PER_RECEIVE, _GATHER_SECONDS)
        self._last_read = time.monotonic()
        if messages:
            self._last_seen = time.monotonic()
        captured: list[Notification] = []
        xids: list[int] = []
        upto = None
        for message in messages:
            if isinstance(message, Keepalive):
                if not self._in_transaction and message.wal_end > self._told:
                    upto = max(upto or 0, message.wal_end)  # all before it was sent
                if message.reply_requested:
                    await self._tell(force=True)
                continue
            try:
                decoded = decode(message.payload)
                transaction = self._collector.feed(decoded)
            except MalformedMessage as error:
                _log.error("slot_message_malformed", error=str(error), action="full reconcile")
                captured += [Resync(time.time(), w.channel) for w in self.watched]
                continue
            self._in_transaction = transaction is None and (
                self._in_transaction or isinstance(decoded, Begin)
            )
            if transaction is not None:
                upto = max(upto or 0, transaction.end_lsn)
                if transaction.announced:
                    xids.append(transaction.xid)
        captured += self._collector.take()
        if xids:
            await self._wait_visible(xids)
        if upto is not None:
            self._reads.append(_Read(upto))
        return captured

    async def _wait_visible(self, xids: list[int]) -> None:
        """Hand keys over only once their transactions are visible to other sessions.

        The server sends a commit as soon as its WAL is flushed, which can be a moment
        before the committing session's change is visible: re-read then, production
        would still show the old row and the change would be let go unwritten.
        """
        deadline = time.monotonic() + self.silence_limit
        # The gap is microseconds: a moment's pause spares nearly every second query (each
        # takes a snapshot, and with it a lock every committing writer needs too).
        await asyncio.sleep(_VISIBLE_PAUSE_SECONDS)
        while not await self.reader.visible(xids):
            if time.monotonic() > deadline:  # never let go unread: the stream sends it again
                raise TransientError("production changes sent by the slot never became visible")
            await asyncio.sleep(_VISIBLE_PAUSE_SECONDS)

    async def _settle(self) -> None:
        """Let the slot go past every read whose keys are all in the sandbox."""
        if self._reads:
            now = self.progress.clock() if self.progress is not None else 0.0
            for read in self._reads:
                if read.stamp is None:
                    read.stamp = now  # its keys were buffered when it was handed over
            leading = self.progress is None or (
                self.progress.all_leading() and self._generation == self.progress.generation()
            )
            since = None if self.progress is None else self.progress.unsettled_since()
            while leading and self._reads:
                stamp = self._reads[0].stamp
                if since is not None and stamp is not None and stamp >= since:
                    break
                self._confirmed = max(self._confirmed, self._reads.popleft().upto)
        await self._tell()

    async def _tell(self, *, force: bool = False) -> None:
        """Send the slot's new position when it moved, and a status now and then anyway."""
        if not self.stream.open:
            return
        due = time.monotonic() - self._last_status >= _STATUS_SECONDS
        if force or due or self._confirmed > self._told:
            await self.stream.confirm(self._confirmed)
            self._told = self._confirmed
            self._last_status = time.monotonic()

    async def keepalive(self) -> None:
        """Every ``state_interval``: the slot still there, its retained WAL exported, and the
        stream asked to answer (a silent stream for ``silence_limit`` is reconnected)."""
        now = time.monotonic()
        if self.stream.open and now - self._last_seen > self.silence_limit:
            raise TransientError("production replication stream silent: reconnecting")
        if now - self._last_state < self.state_interval:
            return
        self._last_state = now
        state = await self.reader.state()
        if not self.stream.open:
            self._last_seen = now  # not streaming (a standby): the plain connection answered
        self._retained = None if state is None else state.retained_bytes
        if state is None:
            self.on_slot(None)
            raise SlotGoneError(f"production replication slot {self.reader.slot!r} is missing")
        self.on_slot(state.retained_bytes)
        if state.wal_status == "lost":
            raise SlotGoneError(
                f"production replication slot {self.reader.slot!r} was invalidated "
                "(max_slot_wal_keep_size exceeded)"
            )
        if self.stream.open:
            await self.stream.confirm(self._confirmed, reply_requested=True)
            self._last_status = now

    async def close(self) -> None:
        await self.stream.close()
        await self.reader.close()
