"""The webhook senders: one task per endpoint and sandbox history, each on its own thread.

A sender never touches the event path: it reads the history the writers already
committed, on a connection of its own, and its blocking steps (a receiver may
take seconds to answer) run on a thread of its own rather than the shared pool
the writers use. A commit of the mapping whose history it reads rings its
doorbell, so a change is sent within milliseconds instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from propagator.daemon.runtime import MappingRuntime
from propagator.daemon.shutdown import TaskSet
from propagator.errors import PropagatorError
from propagator.observability.logging import get_logger
from propagator.observability.metrics import Metrics
from propagator.observability.webhook_metrics import WebhookMetrics
from propagator.services.webhook_delivery import EndpointDelivery, Step
from propagator.settings.webhooks import WebhookSettings

__all__ = ["WebhookSenders"]

_log = get_logger("propagator.webhooks")

Sleep = Callable[[float], Awaitable[None]]


class _Sender:
    """One ``EndpointDelivery`` and what its task waits on."""

    def __init__(self, delivery: EndpointDelivery) -> None:
        self.delivery = delivery
        self.doorbell = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"webhook-{delivery.name}")

    def ring(self) -> None:
        self.doorbell.set()


class WebhookSenders:
    """Every configured endpoint's senders, their metrics and their status."""

    def __init__(
        self,
        webhooks: Sequence[WebhookSettings],
        runtimes: Sequence[MappingRuntime],
        metrics: Metrics,
        stopping: Callable[[], bool],
    ) -> None:
        self.webhooks = tuple(webhooks)
        self.metrics = WebhookMetrics(metrics.registry, [w.name for w in self.webhooks])
        self._stopping = stopping
        self.senders: list[_Sender] = []
        for webhook in self.webhooks:
            self._add(webhook, runtimes)

    def _add(self, webhook: WebhookSettings, runtimes: Sequence[MappingRuntime]) -> None:
        """A sender per sandbox history the endpoint's mappings write into."""
        by_history: dict[tuple[str, str], _Sender] = {}
        for runtime in runtimes:
            settings = runtime.settings
            if not (settings.history_enabled and webhook.covers(runtime.name)):
                continue
            table = (settings.sandbox_url(), settings.history_schema)
            sender = by_history.get(table)
            if sender is None:
                sender = _Sender(EndpointDelivery(webhook, settings))
                by_history[table] = sender
                self.senders.append(sender)
            runtime.state.on_committed.append(sender.ring)

    def start_tasks(self, tasks: TaskSet, sleep: Sleep) -> None:
        for number, sender in enumerate(self.senders):
            name = f"webhook {sender.delivery.name}"
            tasks.start(name if number == 0 else f"{name} #{number}", self._run(sender, sleep))

    async def _run(self, sender: _Sender, sleep: Sleep) -> None:
        loop = asyncio.get_running_loop()
        delivery = sender.delivery
        while not self._stopping():
            sender.doorbell.clear()
            try:
                step = await loop.run_in_executor(sender.executor, delivery.step)
            except PropagatorError as error:
                wait = await loop.run_in_executor(sender.executor, delivery.database_failed, error)
                _log.warning("webhook_sandbox_failed", endpoint=delivery.name, error=str(error))
                await sleep(wait)
                continue
            self._record(delivery, step)
            if step.wait > 0:
                await self._wait(sender, step, sleep)

    async def _wait(self, sender: _Sender, step: Step, sleep: Sleep) -> None:
        """Wait as the step asked; a commit cuts short a poll (never a backoff)."""
        if step.kind == "failed" or step.kind == "standby":
            await sleep(step.wait)
            return
        doorbell = asyncio.ensure_future(sender.doorbell.wait())
        pause = asyncio.ensure_future(sleep(step.wait))
        try:
            await asyncio.wait({doorbell, pause}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (doorbell, pause):
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    def _record(self, delivery: EndpointDelivery, step: Step) -> None:
        if step.result is not None:
            self.metrics.record_delivery(delivery.name, step.result, step.changes)
        if step.gap:
            self.metrics.record_gap_notice(delivery.name)
            _log.warning("webhook_gap_notified", endpoint=delivery.name)
        if step.kind == "failed":
            _log.warning(
                "webhook_delivery_failed",
                endpoint=delivery.name,
                origin=delivery.webhook.origin,
                result=step.result,
                error=step.error,
                failures=delivery.failures,
                retry_in_seconds=round(step.wait, 3),
            )
        elif step.kind == "sent":
            _log.debug("webhook_delivered", endpoint=delivery.name, changes=step.changes)

    def _deliveries(self, webhook: WebhookSettings) -> list[EndpointDelivery]:
        return [s.delivery for s in self.senders if s.delivery.name == webhook.name]

    @staticmethod
    def _summary(deliveries: Sequence[EndpointDelivery]) -> tuple[float, int, bool]:
        """An endpoint's lag (the worst), pending changes (the sum) and whether it is failing,
        over the senders this process runs (a standby's figures are another replica's)."""
        active = [d for d in deliveries if d.active]
        return (
            max((d.lag for d in active), default=0.0),
            sum(d.pending for d in active),
            any(d.failing for d in active),
        )

    def sample(self) -> None:
        """Set each endpoint's gauges from its senders."""
        for webhook in self.webhooks:
            lag, pending, failing = self._summary(self._deliveries(webhook))
            self.metrics.set_state(webhook.name, lag=lag, pending=pending, failing=failing)

    def status(self) -> list[dict[str, Any]]:
        """What ``/status`` shows per endpoint: its settings and each sender's state."""
        shown = []
        for webhook in self.webhooks:
            mine = self._deliveries(webhook)
            lag, pending, failing = self._summary(mine)
            shown.append(
                {
                    **webhook.describe(),
                    "failing": failing,
                    "pending": pending,
                    "lag_seconds": lag,
                    "senders": [d.describe() for d in mine],
                }
            )
        return shown

    def status_fields(self) -> dict[str, Any]:
        """``/status``'s ``webhooks`` list, when any endpoint is configured."""
        return {"webhooks": self.status()} if self.webhooks else {}

    async def close(self) -> None:
        """Close each sender's connections on its own thread, after any step still running
        (a request answers within its timeout): the sender lock goes with the connection."""
        pending = [sender.executor.submit(sender.delivery.drop) for sender in self.senders]
        for sender in self.senders:
            sender.executor.shutdown(wait=False)
        for future in pending:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(future), timeout=1.0)
