"""Retrying for as long as the daemon lives: backoff, jitter, and a slow lane for hopeless errors.

``TransientError`` waits double from ``retry_initial`` up to ``retry_max`` plus up
to ``retry_initial`` of jitter (tenacity's own waits); ``PermanentError`` waits
``permanent_retry_interval`` each time, so a dropped column is reported, not spun on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_fixed,
    wait_random,
)
from tenacity.wait import wait_base

from propagator.errors import DatabaseUnavailableError, PermanentError, TransientError
from propagator.observability.logging import get_logger
from propagator.observability.mapping_metrics import CaptureMetrics, MappingMetrics
from propagator.settings import Settings

__all__ = ["Retrier", "RetryWait", "Stopping", "retry_cause"]

T = TypeVar("T")

_log = get_logger("propagator.daemon")


class Stopping(Exception):
    """Raised out of a retry loop once the daemon is stopping or the work lost its point."""


def retry_cause(error: BaseException) -> str:
    """The bounded ``cause`` label of a retry, from the error's type and side."""
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, DatabaseUnavailableError) and error.side is not None:
        return f"{error.side}_unavailable"
    return "transient"


class RetryWait(wait_base):
    """Exponential backoff with jitter for transient errors, a fixed interval for permanent ones."""

    def __init__(self, settings: Settings) -> None:
        initial = settings.retry_initial.total_seconds()
        self.transient = wait_exponential(
            multiplier=initial, max=settings.retry_max.total_seconds()
        ) + wait_random(0, initial)  # jitter spreads replicas' reconnects apart
        self.permanent = wait_fixed(settings.permanent_retry_interval.total_seconds())

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = self.permanent if isinstance(error, PermanentError) else self.transient
        return float(wait(retry_state))


class Retrier:
    """Runs an operation until it succeeds, the daemon stops, or ``keep_going`` says no."""

    def __init__(
        self,
        settings: Settings,
        metrics: MappingMetrics | CaptureMetrics,
        *,
        sleep: Callable[[float], Awaitable[None]],
        stopping: Callable[[], bool],
        on_error: Callable[[str], None],
    ) -> None:
        self.wait = RetryWait(settings)
        self.metrics = metrics
        self._sleep = sleep
        self._stopping = stopping
        self._on_error = on_error

    async def run(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        keep_going: Callable[[], bool] = lambda: True,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> T:
        """``operation()``'s result; ``Stopping`` once it should give up."""

        def should_stop(_state: RetryCallState) -> bool:
            return self._stopping() or not keep_going()

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            assert error is not None
            self._report(what, error, state.attempt_number, state.upcoming_sleep)
            if on_failure is not None:
                on_failure(error)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((TransientError, PermanentError)),
            wait=self.wait,
            stop=should_stop,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and should_stop(attempt.retry_state):
                        raise Stopping(what)
                    result = await operation()
        except (TransientError, PermanentError) as error:
            if on_failure is not None:
                on_failure(error)
            raise Stopping(what) from error
        attempts = attempt.retry_state.attempt_number
        if attempts > 1:
            _log.info("recovered", operation=what, attempts=attempts)
        return result

    def _report(self, what: str, error: BaseException, attempt: int, delay: float) -> None:
        cause = retry_cause(error)
        self.metrics.record_retry(cause)
        self._on_error(str(error))
        log = _log.error if cause == "permanent" else _log.warning
        log(
            "retry_scheduled",
            operation=what,
            cause=cause,
            attempt=attempt,
            retry_in_seconds=round(delay, 3),
            error=str(error),
        )
