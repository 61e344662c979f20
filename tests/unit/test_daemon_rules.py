"""The daemon's scheduling rules, on fakes: no database, each test in well under a second."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from propagator.daemon import Daemon
from propagator.errors import ActionRefusedError, Refusal
from tests.unit.daemon_fakes import build_daemon, eventually, fast_settings, run_beside


def test_catchup_runs_on_start_and_after_every_reconnect() -> None:
    """A (re)connected capture source is followed by a full catch-up before readiness."""
    daemon, capture, _lock, recorder = build_daemon()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the first catch-up")
        assert recorder.reconciles == ["catchup"]
        capture.drop()
        await eventually(lambda: capture.connects == 2, "the reconnect")
        await eventually(
            lambda: recorder.reconciles == ["catchup", "catchup"] and daemon.catchup_done,
            "the catch-up after the reconnect",
        )
        assert daemon.readiness() == (True, [])

    assert run_beside(daemon, scenario) == 0


def test_keys_wait_for_the_catchup_then_converge() -> None:
    """Keys captured while the catch-up runs are applied after it, not beside it."""
    daemon, capture, _lock, recorder = build_daemon()
    recorder.reconcile_gate.clear()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: recorder.active["reconcile"] == 1, "the catch-up to start")
        capture.change((1, "A"), (2, "B"))
        await asyncio.sleep(0.05)  # several debounce windows: the keys must still wait
        assert recorder.batches == []
        recorder.reconcile_gate.set()
        await eventually(
            lambda: recorder.applied_keys() == {(1, "A"), (2, "B")}, "the keys to converge"
        )

    assert run_beside(daemon, scenario) == 0
    assert recorder.overlaps == []


def test_reconcile_requested_during_a_reconcile_runs_once_afterwards() -> None:
    """Three requests during a running reconcile make exactly one more reconcile."""
    daemon, capture, _lock, recorder = build_daemon()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        recorder.reconcile_gate.clear()
        capture.resync()
        await eventually(lambda: recorder.active["reconcile"] == 1, "the first reconcile")
        for _ in range(3):
            capture.resync()
            await asyncio.sleep(0.03)
        recorder.reconcile_gate.set()
        await eventually(lambda: len(recorder.reconciles) == 3, "the one reconcile afterwards")
        await asyncio.sleep(0.1)
        assert recorder.reconciles == ["catchup", "reconcile", "reconcile"]

    assert run_beside(daemon, scenario) == 0


def test_every_manual_caller_gets_an_answer() -> None:
    """Callers waiting together share one reconcile; all get its summary."""
    daemon, _capture, _lock, recorder = build_daemon()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        recorder.reconcile_gate.clear()
        daemon.pipeline.want_reconcile("periodic")
        await eventually(lambda: recorder.active["reconcile"] == 1, "a reconcile to run")
        callers = [asyncio.create_task(daemon.reconcile_now()) for _ in range(5)]
        await asyncio.sleep(0.02)
        recorder.reconcile_gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*callers), timeout=5)
        assert [answer["source"] for answer in answers] == ["manual"] * 5
        assert recorder.reconciles == ["catchup", "reconcile", "manual"]

    assert run_beside(daemon, scenario) == 0


def test_manual_callers_are_refused_on_stop_and_by_a_standby() -> None:
    """A stop answers waiting callers with 'stopping'; a standby refuses at once."""
    daemon, _capture, lock, recorder = build_daemon()
    outcome: dict[str, Any] = {}

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        recorder.reconcile_gate.clear()
        daemon.pipeline.want_reconcile("periodic")
        await eventually(lambda: recorder.active["reconcile"] == 1, "a reconcile to run")
        outcome["waiting"] = asyncio.create_task(daemon.reconcile_now())
        await asyncio.sleep(0.02)
        daemon.request_stop()
        with pytest.raises(ActionRefusedError) as refused:
            await asyncio.wait_for(outcome["waiting"], timeout=5)
        outcome["reason"] = refused.value.reason
        recorder.reconcile_gate.set()

    assert run_beside(daemon, scenario) == 0
    assert outcome["reason"] is Refusal.STOPPING

    standby, _capture, _lock, _recorder = build_daemon(lock=type(lock)(available=False))

    async def ask_standby(daemon: Daemon) -> None:
        await eventually(lambda: daemon.role == "standby", "the standby role")
        with pytest.raises(ActionRefusedError) as refused:
            await daemon.reconcile_now()
        assert refused.value.reason is Refusal.NOT_LEADER

    assert run_beside(standby, ask_standby) == 0


def test_losing_leadership_stops_the_writers_before_the_next_write() -> None:
    """After the lock is lost, keys captured later are never written by this process."""
    daemon, capture, lock, recorder = build_daemon()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        capture.change((1, "A"))
        await eventually(lambda: (1, "A") in recorder.applied_keys(), "the first write")
        lock.available = False
        capture.change((2, "B"))  # may race the lock poll: the fence must refuse it
        await eventually(lambda: daemon.role == "standby", "the demotion")
        capture.change((3, "C"))
        await asyncio.sleep(0.1)
        assert recorder.applied_keys() == {(1, "A")}
        assert not daemon.is_leader
        assert len(daemon.buffer) == 0

    assert run_beside(daemon, scenario) == 0


def test_a_fenced_write_demotes_at_once() -> None:
    """A write that finds the lock gone in its transaction writes nothing and demotes."""
    settings = fast_settings(standby_poll_interval="PT60S")
    daemon, capture, lock, recorder = build_daemon(settings)

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        lock.available = False  # the poll is a minute away: only the fence can notice
        capture.change((1, "A"))
        await eventually(lambda: daemon.role == "standby", "the demotion by the fence")
        assert recorder.applied_keys() == set()

    assert run_beside(daemon, scenario) == 0


def test_a_full_reconcile_never_runs_beside_a_batch() -> None:
    """Under a stream of keys and repeated reconciles, the two kinds of write never overlap."""
    daemon, capture, _lock, recorder = build_daemon()
    recorder.batch_delay = 0.003

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        for round_ in range(40):
            capture.change(*((round_ * 10 + n, "A") for n in range(10)))
            if round_ % 8 == 0:
                capture.resync()
            await asyncio.sleep(0.004)
        await eventually(lambda: len(recorder.applied_keys()) == 400, "every key to converge")
        assert recorder.reconciles.count("reconcile") >= 2

    assert run_beside(daemon, scenario) == 0
    assert recorder.overlaps == []


def test_a_stop_drains_what_is_buffered() -> None:
    """Keys still waiting when a stop is asked for are applied before the daemon exits."""
    settings = fast_settings(debounce_quiet="PT5S", debounce_max_delay="PT10S")
    daemon, capture, _lock, recorder = build_daemon(settings)

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        capture.change((1, "A"), (2, "B"), (3, "C"))
        await eventually(lambda: len(daemon.buffer) == 3, "the keys to wait in the buffer")

    assert run_beside(daemon, scenario) == 0
    assert recorder.applied_keys() == {(1, "A"), (2, "B"), (3, "C")}


def test_a_change_notified_just_before_a_stop_is_applied_before_exit() -> None:
    """What production said before the stop but the loop had not read yet is still applied."""
    daemon, capture, _lock, recorder = build_daemon()

    async def scenario(daemon: Daemon) -> None:
        await eventually(lambda: daemon.catchup_done, "the catch-up")
        capture.unread = True
        capture.change((9, "Z"))

    assert run_beside(daemon, scenario) == 0
    assert recorder.applied_keys() == {(9, "Z")}
