"""The webhook metrics: one ``endpoint`` label, every series created at 0 up front.

Declared on the daemon's registry next to the other metrics; the label values
are the configured endpoint names, never anything a receiver sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from propagator.observability.metrics import NAMESPACE, checked

__all__ = ["DELIVERY_RESULTS", "WebhookMetrics"]

#: How a request ended: acknowledged (2xx), answered with another status, no answer
#: in time, no connection at all, or an address propagator will not post to.
DELIVERY_RESULTS: Final = ("delivered", "rejected", "timeout", "unreachable", "refused")


class WebhookMetrics:
    """Deliveries, lag, pending changes and failing state per endpoint."""

    def __init__(self, registry: CollectorRegistry, endpoints: Sequence[str]) -> None:
        def counter(name: str, text: str, labels: Sequence[str]) -> Counter:
            return Counter(name, text, labels, namespace=NAMESPACE, registry=registry)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, ["endpoint"], namespace=NAMESPACE, registry=registry)

        self.deliveries = counter(
            "webhook_deliveries",
            "Webhook requests sent, by endpoint and result",
            ["endpoint", "result"],
        )
        self.changes_delivered = counter(
            "webhook_changes_delivered",
            "History changes acknowledged by the endpoint (repeats after a replay count again)",
            ["endpoint"],
        )
        self.gap_notices = counter(
            "webhook_gap_notices",
            "Requests that told the endpoint history was pruned before it received it",
            ["endpoint"],
        )
        self.lag = gauge(
            "webhook_delivery_lag_seconds",
            "How long the oldest change the endpoint has not received has waited (0: caught up)",
        )
        self.pending = gauge(
            "webhook_pending_changes",
            "History rows after the endpoint's cursor, before its filters",
        )
        self.failing = gauge(
            "webhook_failing",
            "1 while the endpoint has failed every request for longer than its failing_after",
        )
        self.endpoints = tuple(endpoints)
        for endpoint in self.endpoints:
            for result in DELIVERY_RESULTS:
                self.deliveries.labels(endpoint, result)
            self.changes_delivered.labels(endpoint)
            self.gap_notices.labels(endpoint)
            self.lag.labels(endpoint).set(0)
            self.pending.labels(endpoint).set(0)
            self.failing.labels(endpoint).set(0)

    def record_delivery(self, endpoint: str, result: str, changes: int = 0) -> None:
        self.deliveries.labels(endpoint, checked(result, DELIVERY_RESULTS, "result")).inc()
        if changes:
            self.changes_delivered.labels(endpoint).inc(changes)

    def record_gap_notice(self, endpoint: str) -> None:
        self.gap_notices.labels(endpoint).inc()

    def set_state(self, endpoint: str, *, lag: float, pending: int, failing: bool) -> None:
        self.lag.labels(endpoint).set(round(lag, 3))
        self.pending.labels(endpoint).set(pending)
        self.failing.labels(endpoint).set(1 if failing else 0)
