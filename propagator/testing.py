"""The daemon of ``propagator run`` in a background thread, for embedding callers.

``propagator demo``, the test suite and the benchmarks all run a real daemon
inside their own process while the main thread writes production and watches
the sandbox. ``DaemonRunner`` is that one way: the daemon on an event loop of
its own in a thread, waits with a deadline that fail fast when the daemon dies,
a graceful stop that drains, and the exit code afterwards::

    with DaemonRunner(settings).start(ready=True) as runner:
        ...  # runner.daemon, runner.metric(...), runner.http_url
    assert runner.exit_code == 0
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from propagator.daemon import Daemon
from propagator.errors import PropagatorError
from propagator.observability.metrics import Metrics
from propagator.settings import Settings
from propagator.settings.webhooks import WebhookSettings

__all__ = ["DaemonRunner"]

T = TypeVar("T")

_POLL_SECONDS = 0.05
_Outcome = Literal["reached", "stopped", "timeout"]


class DaemonRunner:
    """One daemon on its own event loop in a background thread, started and stopped from here."""

    def __init__(
        self,
        settings: Settings,
        *,
        mappings: Sequence[Settings] | None = None,
        metrics: Metrics | None = None,
        instance_id: str | None = None,
        serve_http: bool = True,
        thread_name: str = "propagator-daemon",
        webhooks: Sequence[WebhookSettings] = (),
    ) -> None:
        self.daemon = Daemon(
            settings,
            mappings=mappings,
            webhooks=webhooks,
            metrics=metrics,
            instance_id=instance_id,
            handle_signals=False,
            serve_http=serve_http,
        )
        self.serve_http = serve_http
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=thread_name, daemon=True)

    def _main(self) -> None:
        try:
            with asyncio.Runner() as runner:
                self._loop = runner.get_loop()
                self.exit_code = runner.run(self.daemon.run())
        except BaseException as error:  # reported in the caller's thread by waits and stop()
            self.error = error

    @property
    def alive(self) -> bool:
        """Whether the daemon's thread still runs."""
        return self._thread.is_alive()

    def start(self, *, ready: bool = False, timeout: float = 60.0) -> Self:
        """Start the thread and wait until every task runs, or with ``ready`` until ready.

        Ready is what ``/readyz`` answers 200 to (both databases connected, the
        role known, caught up as leader), plus the HTTP endpoint bound.
        """
        self._thread.start()
        if ready:
            self.wait_ready(timeout)
        else:
            self.wait_for(lambda daemon: daemon.started.is_set(), timeout=timeout, what="start")
        return self

    def _poll(self, condition: Callable[[Daemon], object], timeout: float) -> _Outcome:
        """Whether ``condition`` was reached, the thread ended first, or time ran out."""
        deadline = time.monotonic() + timeout
        while not condition(self.daemon):
            if not self.alive:
                return "stopped"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(_POLL_SECONDS)
        return "reached"

    def wait_for(
        self, condition: Callable[[Daemon], object], *, timeout: float = 30.0, what: str = ""
    ) -> None:
        """Wait until ``condition(daemon)`` holds; raise at the deadline or if the daemon ends."""
        outcome = self._poll(condition, timeout)
        if outcome == "stopped":
            raise PropagatorError(f"the daemon stopped before {what}: {self.failure()}")
        if outcome == "timeout":
            raise PropagatorError(f"the daemon did not reach {what} within {timeout:g}s")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until ready (see ``start``); the error names what was still missing."""
        outcome = self._poll(self._ready, timeout)
        if outcome == "stopped":
            raise PropagatorError(f"the daemon stopped during start-up: {self.failure()}")
        if outcome == "timeout":
            _, reasons = self.daemon.readiness()
            raise PropagatorError(
                f"the daemon was not ready after {timeout:.0f}s: {'; '.join(reasons)}"
            )

    def _ready(self, daemon: Daemon) -> bool:
        ready, _ = daemon.readiness()
        return ready and (daemon.http is not None or not self.serve_http)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until this daemon leads and its catch-up reconcile has finished."""
        self.wait_for(
            lambda daemon: daemon.role == "leader" and daemon.catchup_done,
            timeout=timeout,
            what="leadership and a finished catch-up",
        )

    def check_alive(self) -> None:
        """Raise if the daemon stopped on its own: a caller must not wait for it in vain."""
        if not self.alive:
            raise PropagatorError(f"the daemon stopped: {self.failure()}")

    def failure(self) -> str:
        """Why the daemon ended: the exception, the crashed task, the last error or the code."""
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        return self.daemon.crashed or self.daemon.last_error or f"exit code {self.exit_code}"

    @property
    def http_url(self) -> str:
        """The base URL of the daemon's HTTP endpoint (metrics, status page, probes)."""
        http = self.daemon.http
        if http is None:
            raise PropagatorError("the daemon serves no HTTP endpoint")
        return http.url

    def metric(self, name: str, /, **labels: str) -> float:
        """A value from the daemon's Prometheus registry: the sum over the series carrying
        ``labels``, whatever their mapping (0 when absent)."""
        wanted = labels.items()
        return sum(
            float(sample.value)
            for family in self.daemon.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and wanted <= sample.labels.items()
        )

    def run_coroutine(
        self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0
    ) -> T:
        """Run a coroutine on the daemon's loop and return its result.

        Objects the daemon owns, such as the listener's connection, belong to
        that loop and may only be awaited there.
        """
        loop = self._loop
        if loop is None or not self.alive:
            raise PropagatorError("the daemon's event loop is not running")
        return asyncio.run_coroutine_threadsafe(factory(), loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Ask for a graceful stop (the daemon drains), wait for the thread, return the exit code.

        A request made before the daemon has set up its loop would be lost, so
        it is repeated until the thread ends. Raises if the thread outlives
        ``timeout`` or ended with an exception.
        """
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            # The loop may close between the daemon's check and the call: it has stopped then.
            with contextlib.suppress(RuntimeError):
                self.daemon.request_stop()
            self._thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
        if self.alive:
            raise PropagatorError(f"the daemon did not stop within {timeout:g}s")
        if self.error is not None:
            raise PropagatorError(f"the daemon failed: {self.failure()}") from self.error
        return self.exit_code

    def __enter__(self) -> Self:
        if self._thread.ident is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
            return
        # The body's failure is the story; a stop that also fails must not hide it.
        with contextlib.suppress(PropagatorError):
            self.stop()
