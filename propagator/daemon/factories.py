"""The real parts the daemon is built from; tests hand the supervisor fakes instead."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from propagator.adapters.connections import url_for
from propagator.adapters.leader import LeaderLock, lock_id_for
from propagator.adapters.listener import Listener
from propagator.adapters.slot_reader import SlotReader, SlotTarget
from propagator.adapters.slot_stream import SlotStream
from propagator.daemon.capture import CaptureSource
from propagator.daemon.leadership import LeaderLockPort
from propagator.daemon.logical import LogicalCapture, watched_relations
from propagator.daemon.shared import SharedProduction
from propagator.daemon.writers import SandboxWriter, Writer
from propagator.services.history import History
from propagator.settings import Settings

__all__ = [
    "CaptureFactory",
    "LockFactory",
    "SharedProductionWriters",
    "WriterFactory",
    "advisory_lock",
    "capture_for",
    "logical_capture",
    "notify_capture",
    "sandbox_writer",
]

CaptureFactory = Callable[[Sequence[Settings], str], CaptureSource]
"""(the mappings reading one production database, instance id) -> its change notifications."""
LockFactory = Callable[[Settings, str], LeaderLockPort]
"""(settings, instance id) -> the leader lock."""
WriterFactory = Callable[[Settings, History], Writer]
"""(settings, history) -> one lane's writer."""


def notify_capture(mappings: Sequence[Settings], instance_id: str) -> Listener:
    """Production triggers' NOTIFYs, heard on one LISTEN connection per production database.

    Each watched table has its own channel; heartbeats travel on the first one.
    """
    settings = mappings[0]
    more = {m.channel: len(m.key_columns) for m in mappings if m.channel != settings.channel}
    return Listener(
        url_for(settings, "production"),
        settings.channel,
        instance_id=instance_id,
        key_width=len(settings.key_columns),
        more_channels=more,
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat_timeout=settings.heartbeat_timeout,
        connect_timeout=settings.connect_timeout,
        application_name=f"propagator listener {instance_id}"[:63],
    )


def logical_capture(mappings: Sequence[Settings], instance_id: str) -> LogicalCapture:
    """A pgoutput slot on one production database, read by the leader (``capture = logical``)."""
    settings = mappings[0]
    target = SlotTarget(
        url_for(settings, "production"),
        settings.logical_slot,
        settings.logical_publication,
        settings.connect_timeout,
    )
    return LogicalCapture(
        SlotReader(target, application_name=f"propagator slot {instance_id}"[:63]),
        SlotStream(target, application_name=f"propagator stream {instance_id}"[:63]),
        watched_relations(mappings),
        max_keys=settings.buffer_max_keys,
        state_interval=settings.heartbeat_interval.total_seconds(),
        silence_limit=settings.heartbeat_timeout.total_seconds(),
    )


def capture_for(settings: Settings) -> CaptureFactory:
    """The capture the settings choose: triggers and NOTIFY, or a logical slot."""
    return logical_capture if settings.capture == "logical" else notify_capture


def advisory_lock(settings: Settings, instance_id: str) -> LeaderLock:
    """A session advisory lock on the sandbox, by default derived from the table's name."""
    lock_id = lock_id_for(
        settings.sandbox_table_name, settings.mapping_name, settings.leader_lock_id
    )
    return LeaderLock(
        url_for(settings, "sandbox"),
        lock_id,
        connect_timeout=settings.connect_timeout,
        probe_timeout=min(settings.heartbeat_timeout, settings.connect_timeout),
        application_name=f"propagator leader {instance_id}"[:63],
    )


def sandbox_writer(settings: Settings, history: History) -> SandboxWriter:
    """A writer with production connections of its own (for callers outside the daemon)."""
    return SandboxWriter(settings, history)


class SharedProductionWriters:
    """Writers that read a production database several mappings read on one shared connection.

    The daemon's default: however many mappings and lanes read such a database,
    they cost it one connection besides the listener's. A database only one
    mapping reads keeps a connection per lane, so that mapping's lanes read it
    side by side, as they always have.
    """

    def __init__(self, mappings: Sequence[Settings]) -> None:
        self.readers = Counter(m.production_url() for m in mappings)
        self.shared: dict[str, SharedProduction] = {}

    def __call__(self, settings: Settings, history: History) -> SandboxWriter:
        url = settings.production_url()
        if self.readers[url] <= 1:
            return SandboxWriter(settings, history)
        shared = self.shared.get(url)
        if shared is None:
            shared = self.shared[url] = SharedProduction(settings)
        return SandboxWriter(settings, history, shared)

    def close(self) -> None:
        for shared in self.shared.values():
            shared.close()
