"""Stalls made visible: how long keys wait, and a writer whose reconciles stopped succeeding."""

from __future__ import annotations

from datetime import timedelta

from propagator.core.debounce import DebounceBuffer, PartitionedBuffer
from propagator.daemon import Daemon
from propagator.daemon.triggerwatch import TriggerWatch
from propagator.services.triggers import TriggerStatus
from propagator.settings import watched_tables
from tests.helpers import FakeClock
from tests.unit.daemon_fakes import build_daemon, eventually, fast_settings, run_beside


def make(clock: FakeClock, *, max_keys: int = 100) -> DebounceBuffer:
    return DebounceBuffer(
        quiet=timedelta(milliseconds=50),
        max_delay=timedelta(milliseconds=500),
        max_keys=max_keys,
        hard_cap=1000,
        clock=clock,
    )


def test_the_oldest_pending_key_ages_until_it_is_taken() -> None:
    """0 when empty; the first key's wait, not the newest one's; a taken batch keeps its age."""
    clock = FakeClock()
    buffer = make(clock, max_keys=1)
    assert buffer.oldest_age() == 0.0
    buffer.add([(1, "A")])
    clock.advance(3)
    buffer.add([(2, "B"), (1, "A")])
    clock.advance(2)
    assert buffer.oldest_age() == 5.0
    batch = buffer.take()
    assert batch is not None
    assert batch.keys == ((1, "A"),)
    assert batch.arrived == 1000.0
    assert buffer.oldest_age() == 2.0  # (2, "B") waits on
    clock.advance(10)
    assert buffer.oldest_age(since=batch.arrived) == 15.0  # the batch stuck in retries
    buffer.take()
    assert buffer.oldest_age() == 0.0
    assert buffer.received_total == 2  # distinct keys; the repeated (1, "A") coalesced


def test_keys_handed_back_for_a_retry_keep_their_first_arrival() -> None:
    """A batch whose rows a sandbox session holds is handed back, again and again: its keys
    age from when they first arrived, not from the last retry."""
    clock = FakeClock()
    buffer = make(clock)
    buffer.add([(1, "A"), (2, "B")])
    clock.advance(1)
    for _ in range(3):
        batch = buffer.take("drain")
        assert batch is not None
        assert batch.arrived == 1000.0
        buffer.defer(batch.keys, None, 1.0)
        buffer.batch_finished()
        clock.advance(2)
        assert buffer.oldest_age() == clock.now - 1000.0
    buffer.add([(3, "C")])
    batch = buffer.take("drain")
    assert batch is not None
    assert set(batch.keys) == {(1, "A"), (2, "B"), (3, "C")}
    assert batch.arrived == 1000.0
    assert buffer.oldest_age() == 0.0


def test_partitions_count_every_key_received() -> None:
    """Each distinct key once, whichever partition holds it."""
    buffer = PartitionedBuffer(
        2, quiet=timedelta(0), max_delay=timedelta(0), max_keys=10, hard_cap=100
    )
    buffer.add([(n,) for n in range(7)])
    buffer.add([(1,), (2,)])
    assert buffer.received_total == 7


def test_readiness_fails_when_no_reconcile_succeeded_within_two_intervals() -> None:
    """Reconciles that stop finishing make the writer unready after two intervals; the next
    success makes it ready again. An unreachable production for the trigger check (as here)
    changes nothing."""
    settings = fast_settings(reconcile_interval=timedelta(milliseconds=100))
    daemon, _capture, _lock, recorder = build_daemon(settings)
    overdue = "no reconcile succeeded in the last 2 intervals"

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the first catch-up")
        assert daemon.readiness() == (True, [])
        recorder.reconcile_gate.clear()  # the next periodic reconcile hangs
        await eventually(
            lambda: any(overdue in reason for reason in daemon.readiness()[1]),
            "the overdue reconcile to make the daemon unready",
        )
        (reason,) = daemon.readiness()[1]
        assert "last success" in reason
        assert "reconcile_interval 0.1 s" in reason
        recorder.reconcile_gate.set()
        await eventually(lambda: daemon.readiness() == (True, []), "ready again")
        triggers = daemon.status()["triggers"]
        assert triggers["current"] is None
        assert triggers["check_error"]

    assert run_beside(daemon, scenario) == 0


def trigger_status(*problems: str, installed: bool = True) -> TriggerStatus:
    return TriggerStatus(
        table="public.jobs",
        installed=installed,
        version=1,
        channel="c",
        key_columns=("job",),
        watched_columns=("job", "fab_order"),
        triggers=(),
        functions=(),
        current=installed and not problems,
        problems=problems,
    )


def test_which_trigger_problems_make_the_daemon_unready() -> None:
    """Never installed: reported, not unready. Lost after being seen, dropped, disabled or
    on the wrong channel: unready. Of another release yet announcing every change: reported
    only, so neither upgrade order blocks a rollout."""
    (table,) = watched_tables([fast_settings()])
    watch = TriggerWatch(table, [])
    assert (watch.readiness_reason(), watch.problem()) == (None, None)  # not checked yet
    watch._record(trigger_status("not installed", installed=False))
    assert watch.readiness_reason() is None
    assert watch.problem() == (
        "production triggers missing or not current on public.jobs: not installed"
    )
    watch._record(trigger_status())
    assert (watch.readiness_reason(), watch.problem()) == (None, None)
    watch._record(trigger_status("not installed", installed=False))
    assert watch.readiness_reason() == watch.problem()
    for breaking in ("missing triggers: t1", "disabled triggers: t1", "notifies channel 'x'"):
        watch._record(trigger_status("installed version 1, this release installs 2", breaking))
        assert watch.readiness_reason() == watch.problem()
        assert breaking in (watch.readiness_reason() or "")
    watch._record(trigger_status("installed version 1, this release installs 2"))
    assert watch.readiness_reason() is None
    assert watch.describe()["current"] is False
    assert "this release installs 2" in (watch.describe()["problem"] or "")
