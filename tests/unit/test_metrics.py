"""The metrics contract: names, types, labels and helpers, read back from a real scrape."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from propagator import __version__
from propagator.observability.mapping_metrics import MappingMetrics
from propagator.observability.metrics import (
    APPLY_SOURCES,
    DATABASES,
    HTTP_REFUSALS,
    LAG_BUCKETS,
    MALFORMED_REASONS,
    RETRY_CAUSES,
    Metrics,
)
from tests.helpers import assert_promtool_accepts

# attribute -> (family name as parsed, type)
CONTRACT: dict[str, tuple[str, str]] = {
    "notifications_received": ("propagator_notifications_received", "counter"),
    "notifications_malformed": ("propagator_notifications_malformed", "counter"),
    "keys_coalesced": ("propagator_keys_coalesced", "counter"),
    "batches_applied": ("propagator_batches_applied", "counter"),
    "rows_applied": ("propagator_rows_applied", "counter"),
    "rows_failed": ("propagator_rows_failed", "counter"),
    "rows_deferred": ("propagator_rows_deferred", "counter"),
    "propagation_lag": ("propagator_propagation_lag_seconds", "histogram"),
    "debounce_buffer_keys": ("propagator_debounce_buffer_keys", "gauge"),
    "reconcile_runs": ("propagator_reconcile_runs", "counter"),
    "reconcile_duration": ("propagator_reconcile_duration_seconds", "histogram"),
    "reconcile_differences": ("propagator_reconcile_differences", "counter"),
    "reconcile_last_differences": ("propagator_reconcile_last_differences", "gauge"),
    "reconcile_last_success": ("propagator_reconcile_last_success_timestamp_seconds", "gauge"),
    "database_connected": ("propagator_database_connected", "gauge"),
    "listener_connected": ("propagator_listener_connected", "gauge"),
    "leader": ("propagator_leader", "gauge"),
    "retries": ("propagator_retries", "counter"),
    "heartbeat_age": ("propagator_listener_heartbeat_age_seconds", "gauge"),
    "notification_queue_usage": ("propagator_notification_queue_usage_ratio", "gauge"),
    # An Info is a constant-1 gauge in the Prometheus text format.
    "build_info": ("propagator_build_info", "gauge"),
    "last_loop_timestamp": ("propagator_loop_last_tick_timestamp_seconds", "gauge"),
    "http_refused": ("propagator_http_refused", "counter"),
}


def scrape(metrics: Metrics) -> dict[str, list[Sample]]:
    text = metrics.render().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def families(metrics: Metrics) -> dict[str, str]:
    text = metrics.render().decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def value(metrics: Metrics, sample_name: str, **labels: str) -> float:
    """The sum over the series carrying ``labels`` (the mapping label included or not)."""
    found = [
        float(sample.value)
        for samples in scrape(metrics).values()
        for sample in samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    ]
    if not found:
        raise AssertionError(f"no sample {sample_name}{labels}")
    return sum(found)


def per_mapping(metrics: Metrics) -> MappingMetrics:
    return MappingMetrics(metrics, "default")


def test_every_contract_metric_is_exported_with_its_type() -> None:
    """Each attribute of the contract exists and its family has the agreed name and type."""
    metrics = Metrics()
    exported = families(metrics)
    for attribute, (name, kind) in CONTRACT.items():
        assert hasattr(metrics, attribute), attribute
        assert exported.get(name) == kind, f"{attribute}: {name} is {exported.get(name)}"


def test_counters_end_in_total_and_everything_is_prefixed() -> None:
    """Counter samples end in _total; every propagator series carries the prefix."""
    text = Metrics().render().decode()
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("propagator_"), family.name
        if family.type == "counter":
            names = {s.name for s in family.samples}
            assert f"{family.name}_total" in names, family.name


def test_labelled_series_exist_at_zero_before_any_event() -> None:
    """Every bounded label combination is pre-created so rate() and absent() work at once."""
    metrics = Metrics()
    for source in APPLY_SOURCES:
        assert value(metrics, "propagator_rows_applied_total", source=source) == 0
        assert value(metrics, "propagator_batches_applied_total", source=source) == 0
        assert value(metrics, "propagator_rows_failed_total", source=source) == 0
        for result in ("success", "failure"):
            assert (
                value(metrics, "propagator_reconcile_runs_total", source=source, result=result) == 0
            )
        assert value(metrics, "propagator_reconcile_duration_seconds_count", source=source) == 0
    for reason in MALFORMED_REASONS:
        assert value(metrics, "propagator_notifications_malformed_total", reason=reason) == 0
    for cause in RETRY_CAUSES:
        assert value(metrics, "propagator_retries_total", cause=cause) == 0
    for database in DATABASES:
        assert value(metrics, "propagator_database_connected", database=database) == 0
    for reason in HTTP_REFUSALS:
        assert value(metrics, "propagator_http_refused_total", reason=reason) == 0


def test_build_info_carries_the_version() -> None:
    """propagator_build_info{version} is 1 and names the installed version."""
    assert value(Metrics(), "propagator_build_info", version=__version__) == 1


def test_each_instance_has_its_own_registry() -> None:
    """Two Metrics never share series (no global registry): tests and replicas stay apart."""
    first, second = Metrics(), Metrics()
    per_mapping(first).notifications_received.inc(3)
    assert value(first, "propagator_notifications_received_total") == 3
    assert value(second, "propagator_notifications_received_total") == 0


def test_an_injected_registry_is_used() -> None:
    """A given CollectorRegistry receives the metrics (and no process collectors are added)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    assert registry.get_sample_value("propagator_leader", {"mapping": "default"}) == 0
    assert registry.get_sample_value("process_resident_memory_bytes") is None


def test_lag_buckets_span_five_milliseconds_to_a_minute() -> None:
    """The lag histogram resolves a debounce window and an outage catch-up alike."""
    metrics = Metrics()
    bounds = [
        float(s.labels["le"])
        for s in scrape(metrics)["propagator_propagation_lag_seconds"]
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert bounds == list(LAG_BUCKETS)
    assert bounds[0] == 0.005
    assert bounds[-1] == 60.0


def test_observe_lag_measures_from_the_change_time_and_never_goes_negative() -> None:
    """observe_lag records now - change time; a change 'in the future' (clock skew) counts 0."""
    metrics = Metrics()
    assert per_mapping(metrics).observe_lag(100.0, now=100.2) == pytest.approx(0.2)
    assert per_mapping(metrics).observe_lag(105.0, now=100.0) == 0.0
    assert value(metrics, "propagator_propagation_lag_seconds_count") == 2
    assert value(metrics, "propagator_propagation_lag_seconds_bucket", le="0.005") == 1
    assert value(metrics, "propagator_propagation_lag_seconds_bucket", le="0.25") == 2


def test_record_batch_counts_batches_and_rows_by_source() -> None:
    """One batch call moves the batch counter and the applied/failed row counters together."""
    metrics = Metrics()
    per_mapping(metrics).record_batch("event", applied=7, failed=1)
    per_mapping(metrics).record_batch("event", applied=0)
    assert value(metrics, "propagator_batches_applied_total", source="event") == 2
    assert value(metrics, "propagator_rows_applied_total", source="event") == 7
    assert value(metrics, "propagator_rows_failed_total", source="event") == 1
    assert value(metrics, "propagator_rows_applied_total", source="catchup") == 0


def test_record_reconcile_success_and_failure() -> None:
    """A successful reconcile sets drift and last-success time; a failed one only counts."""
    metrics = Metrics()
    per_mapping(metrics).record_reconcile(
        "reconcile", success=True, duration_seconds=1.5, differences=4, finished_at=1000.0
    )
    per_mapping(metrics).record_reconcile("reconcile", success=False, duration_seconds=0.2)
    labels = {"source": "reconcile"}
    assert value(metrics, "propagator_reconcile_runs_total", result="success", **labels) == 1
    assert value(metrics, "propagator_reconcile_runs_total", result="failure", **labels) == 1
    assert value(metrics, "propagator_reconcile_duration_seconds_count", **labels) == 2
    assert value(metrics, "propagator_reconcile_differences_total", **labels) == 4
    assert value(metrics, "propagator_reconcile_last_differences") == 4
    assert value(metrics, "propagator_reconcile_last_success_timestamp_seconds") == 1000.0


def test_unbounded_label_values_are_refused() -> None:
    """A source, cause or database outside its fixed set is a programming error, not a series."""
    metrics = Metrics()
    with pytest.raises(ValueError, match="source"):
        per_mapping(metrics).record_batch("job 42", applied=1)
    with pytest.raises(ValueError, match="cause"):
        per_mapping(metrics).record_retry("whatever")
    with pytest.raises(ValueError, match="database"):
        per_mapping(metrics).set_database_connected("staging", True)


def test_unknown_malformed_reason_counts_as_other() -> None:
    """A malformed notification with an unforeseen reason still counts, under 'other'."""
    metrics = Metrics()
    per_mapping(metrics).record_malformed("invalid_json")
    per_mapping(metrics).record_malformed("something new")
    assert value(metrics, "propagator_notifications_malformed_total", reason="invalid_json") == 1
    assert value(metrics, "propagator_notifications_malformed_total", reason="other") == 1


def test_connection_loop_and_retry_helpers() -> None:
    """set_database_connected, mark_loop_tick and record_retry set the agreed series."""
    metrics = Metrics()
    per_mapping(metrics).set_database_connected("sandbox", True)
    metrics.mark_loop_tick(now=1234.5)
    per_mapping(metrics).record_retry("production_unavailable")
    assert value(metrics, "propagator_database_connected", database="sandbox") == 1
    assert value(metrics, "propagator_database_connected", database="production") == 0
    assert value(metrics, "propagator_loop_last_tick_timestamp_seconds") == 1234.5
    assert value(metrics, "propagator_retries_total", cause="production_unavailable") == 1


def test_promtool_accepts_the_exposition() -> None:
    """promtool check metrics finds no naming or format problem in a scrape."""
    metrics = Metrics()
    per_mapping(metrics).record_batch("event", applied=2)
    per_mapping(metrics).observe_lag(1.0, now=1.1)
    assert_promtool_accepts(metrics.render())


def test_http_refusals_count_by_a_bounded_reason() -> None:
    """record_http_refused counts a known reason and refuses an unknown one."""
    metrics = Metrics()
    metrics.record_http_refused("evicted")
    metrics.record_http_refused("evicted")
    assert value(metrics, "propagator_http_refused_total", reason="evicted") == 2
    with pytest.raises(ValueError, match="reason"):
        metrics.record_http_refused("/some/path")
