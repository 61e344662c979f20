"""The webhook metrics contract: every endpoint's series from the first scrape, bounded labels."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from propagator.observability.metrics import Metrics
from propagator.observability.webhook_metrics import DELIVERY_RESULTS, WebhookMetrics
from tests.helpers import assert_promtool_accepts

ENDPOINTS = ("billing", "search")


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a real exposition: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("propagator_webhook_")
    }


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_series_exists_at_zero_for_each_endpoint_from_the_start() -> None:
    """Before any request: each endpoint has every result's counter and each gauge, all 0."""
    registry = CollectorRegistry()
    WebhookMetrics(registry, ENDPOINTS)
    samples = scrape(registry)
    for endpoint in ENDPOINTS:
        for result in DELIVERY_RESULTS:
            key = (
                "propagator_webhook_deliveries_total",
                (("endpoint", endpoint), ("result", result)),
            )
            assert samples[key] == 0, key
        for name in (
            "propagator_webhook_changes_delivered_total",
            "propagator_webhook_gap_notices_total",
            "propagator_webhook_delivery_lag_seconds",
            "propagator_webhook_pending_changes",
            "propagator_webhook_failing",
        ):
            assert samples[(name, (("endpoint", endpoint),))] == 0, (name, endpoint)
    # Nothing else: no series for an endpoint that is not configured, no other result.
    endpoints = {dict(labels)["endpoint"] for _, labels in samples}
    assert endpoints == set(ENDPOINTS)
    results = {dict(labels).get("result") for _, labels in samples} - {None}
    assert results == set(DELIVERY_RESULTS)


def test_no_endpoint_means_no_series() -> None:
    """Without [[webhooks]] the families are declared but carry no sample."""
    registry = CollectorRegistry()
    WebhookMetrics(registry, ())
    assert scrape(registry) == {}


def test_record_delivery_refuses_an_unknown_result() -> None:
    """A result outside the fixed set is a ValueError and creates no series."""
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry, ENDPOINTS)
    before = scrape(registry)
    with pytest.raises(ValueError, match="result label 'HTTP 500' is not one of delivered"):
        metrics.record_delivery("billing", "HTTP 500")
    assert scrape(registry) == before


def test_deliveries_count_by_result_and_changes_only_when_given() -> None:
    """Each request counts once under its result; delivered changes add up per endpoint."""
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry, ENDPOINTS)
    metrics.record_delivery("billing", "delivered", changes=40)
    metrics.record_delivery("billing", "delivered", changes=2)
    metrics.record_delivery("billing", "timeout")
    metrics.record_gap_notice("search")
    deliveries = "propagator_webhook_deliveries_total"
    assert sample(registry, deliveries, endpoint="billing", result="delivered") == 2
    assert sample(registry, deliveries, endpoint="billing", result="timeout") == 1
    assert sample(registry, deliveries, endpoint="search", result="delivered") == 0
    changes = "propagator_webhook_changes_delivered_total"
    assert sample(registry, changes, endpoint="billing") == 42
    assert sample(registry, changes, endpoint="search") == 0
    assert sample(registry, "propagator_webhook_gap_notices_total", endpoint="search") == 1
    assert sample(registry, "propagator_webhook_gap_notices_total", endpoint="billing") == 0


def test_set_state_sets_the_gauges_the_alerts_read() -> None:
    """Lag (rounded to ms), pending and failing as 1/0, per endpoint; failing clears again."""
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry, ENDPOINTS)
    metrics.set_state("billing", lag=1234.56789, pending=17, failing=True)
    assert sample(registry, "propagator_webhook_delivery_lag_seconds", endpoint="billing") == (
        1234.568
    )
    assert sample(registry, "propagator_webhook_pending_changes", endpoint="billing") == 17
    assert sample(registry, "propagator_webhook_failing", endpoint="billing") == 1
    assert sample(registry, "propagator_webhook_failing", endpoint="search") == 0
    metrics.set_state("billing", lag=0.0, pending=0, failing=False)
    assert sample(registry, "propagator_webhook_failing", endpoint="billing") == 0
    assert sample(registry, "propagator_webhook_delivery_lag_seconds", endpoint="billing") == 0


def test_promtool_accepts_the_webhook_exposition() -> None:
    """promtool check metrics finds no naming or format problem with webhooks configured."""
    metrics = Metrics()
    webhooks = WebhookMetrics(metrics.registry, ENDPOINTS)
    webhooks.record_delivery("billing", "rejected")
    webhooks.set_state("billing", lag=3.5, pending=4, failing=False)
    assert_promtool_accepts(metrics.render())
