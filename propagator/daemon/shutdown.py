"""The daemon's tasks as one set: the first to end (or a stop) ends them all, gracefully."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from propagator.daemon.status import DaemonState
from propagator.observability.logging import get_logger

__all__ = ["StopSignals", "TaskSet"]

_log = get_logger("propagator.daemon")


class TaskSet:
    """Named tasks sharing one stop event; a task that ends on its own is a crash."""

    def __init__(self, stop: asyncio.Event, state: DaemonState) -> None:
        self.stop = stop
        self.state = state
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self.tasks.add(asyncio.create_task(work, name=name))

    async def wait_first(self) -> None:
        """Until a stop is asked for or a task ends; then everything is asked to stop."""
        stop_waiter = asyncio.create_task(self.stop.wait(), name="stop")
        done, _ = await asyncio.wait(
            {*self.tasks, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
        )
        stopping = self.stop.is_set()
        for task in done - {stop_waiter}:
            # After a stop request the tasks end on their own; only a failure is a crash then.
            if not stopping or task.cancelled() or task.exception() is not None:
                self._record_crash(task)
        self.stop.set()
        stop_waiter.cancel()

    async def shutdown(
        self,
        timeout: timedelta,
        cancel_writes: Callable[[], None],
        pending_keys: Callable[[], int],
    ) -> bool:
        """Let the tasks finish (the lanes drain), then cancel what overstays; whether all
        finished in time."""
        in_time = True
        pending = {t for t in self.tasks if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout.total_seconds())
            if late:
                _log.warning(
                    "shutdown_timeout",
                    tasks=sorted(t.get_name() for t in late),
                    pending_keys=pending_keys(),
                )
                cancel_writes()
                in_time = False
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=5)
        for task in self.tasks:
            failed = task.done() and not task.cancelled() and task.exception() is not None
            if failed and self.state.crashed is None:
                self._record_crash(task)
        return in_time

    def _record_crash(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.state.crashed = f"task {task.get_name()} was cancelled"
        elif task.exception() is not None:
            error = task.exception()
            self.state.crashed = f"task {task.get_name()} failed: {type(error).__name__}: {error}"
            _log.error("task_crashed", task=task.get_name(), error=error, exc_info=error)
        else:
            self.state.crashed = f"task {task.get_name()} ended unexpectedly"
            _log.error("task_crashed", task=task.get_name(), error="ended unexpectedly")


class StopSignals:
    """SIGTERM and SIGINT ask for a graceful stop; a repeated signal is only logged.

    Installed only in the main thread (an embedding caller's thread has no signals).
    """

    def __init__(self, stop: asyncio.Event, wake: Callable[[], None], *, enabled: bool) -> None:
        self.stop = stop
        self.wake = wake
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.enabled:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.enabled:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.stop.is_set():
            _log.warning("signal_repeated", signal=signal.Signals(signum).name)
            return
        _log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop.set()
        self.wake()
