"""One trigger set per production table: the columns it watches are the union of its mappings'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from propagator.core.identifiers import QualifiedName
from propagator.errors import ConfigurationError
from propagator.services.trigger_spec import TriggerSpec, trigger_spec, union_watched_columns
from propagator.services.trigger_sql import render_install_sql, render_uninstall_sql
from propagator.services.trigger_tables import tables_with_every_reader
from propagator.settings import Settings, WatchedTable, watched_tables
from propagator.settings.mappings import resolve_mappings

PRODUCTION = "postgresql://user:pw@prod.example/app"
JOBS = {"name": "jobs", "field_mappings": ["fab_order"]}
JOBS_QA = {
    "name": "jobs_qa",
    "sandbox_database_url": "postgresql://user:pw@qa.example/app",
    "field_mappings": ["paint_color->color", "fab_order->planned"],
}
ORDERS = {
    "name": "orders",
    "production_table": "public.orders",
    "sandbox_table": "public.orders",
    "key_columns": ["id"],
    "field_mappings": ["status", "total->amount"],
}


def top_level(**overrides: Any) -> Settings:
    return Settings(
        production_database_url=PRODUCTION,
        sandbox_database_url="postgresql://user:pw@sandbox.example/app",
        **overrides,
    )


def mappings(*tables: dict[str, Any], selection: Sequence[str] = ()) -> tuple[Settings, ...]:
    return resolve_mappings(top_level(), tables, selection).mappings


def test_one_mapping_watches_exactly_its_own_columns() -> None:
    """The default mapping's triggers are what they always were: keys, then mapped sources."""
    settings = top_level(field_mappings=["fab_order", "stage->step", "fab_order->copy"])
    assert union_watched_columns([settings]) == ("job", "release", "fab_order", "stage")
    spec = trigger_spec(settings)
    assert spec.watched_columns == settings.mapping_spec.watched_columns
    assert spec.value_columns == ("fab_order", "stage")
    assert (spec.table, spec.channel) == (QualifiedName("public", "jobs"), "propagator_jobs")


def test_the_union_keeps_the_key_first_and_each_column_once_in_mapping_order() -> None:
    jobs, qa = mappings(JOBS, JOBS_QA)
    assert union_watched_columns([jobs, qa]) == ("job", "release", "fab_order", "paint_color")
    assert union_watched_columns([qa, jobs]) == ("job", "release", "paint_color", "fab_order")


def test_a_source_that_is_also_a_key_column_is_watched_once() -> None:
    settings = top_level(field_mappings=["job->job_copy", "fab_order"])
    assert union_watched_columns([settings]) == ("job", "release", "fab_order")
    assert trigger_spec(settings).value_columns == ("fab_order",)


def test_mappings_of_one_table_share_one_spec_and_other_tables_get_their_own() -> None:
    jobs_table, orders_table = watched_tables(mappings(JOBS, JOBS_QA, ORDERS))
    jobs_spec, orders_spec = trigger_spec(jobs_table), trigger_spec(orders_table)
    assert jobs_spec == TriggerSpec(
        QualifiedName("public", "jobs"),
        "propagator_jobs",
        ("job", "release"),
        ("job", "release", "fab_order", "paint_color"),
        ("jobs", "jobs_qa"),
    )
    assert orders_spec.watched_columns == ("id", "status", "total")
    assert orders_spec.channel == "propagator_orders"
    assert orders_spec.mappings == ("orders",)


def test_two_mappings_install_what_one_mapping_reading_both_columns_would() -> None:
    """The script depends on the table and its columns, never on how many mappings read it."""
    (jobs_table,) = watched_tables(mappings(JOBS, JOBS_QA))
    one = top_level(field_mappings=["fab_order", "paint_color->color"])
    assert render_install_sql(jobs_table) == render_install_sql(one)
    assert render_uninstall_sql(jobs_table) == render_uninstall_sql(one)
    jsonb = ["paint_color"]
    assert render_install_sql(jobs_table, compare_as_jsonb=jsonb) == render_install_sql(
        one, compare_as_jsonb=jsonb
    )


def test_a_single_mapping_renders_the_same_as_its_one_mapping_table() -> None:
    settings = top_level()
    (table,) = watched_tables([settings])
    assert render_install_sql(settings) == render_install_sql(table)
    assert render_install_sql(settings) == render_install_sql(trigger_spec(table))


def test_mappings_with_different_keys_cannot_share_a_trigger_set() -> None:
    """Configuration refuses it; a table assembled by hand is refused as well, naming both."""
    jobs, qa = mappings(JOBS, JOBS_QA)
    odd = qa.model_copy(update={"key_columns": ("job",)})
    table = WatchedTable(
        PRODUCTION, QualifiedName("public", "jobs"), "propagator_jobs", (jobs, odd)
    )
    with pytest.raises(ConfigurationError, match=r"'jobs' and 'jobs_qa'.*different key columns"):
        trigger_spec(table)


def test_a_selection_chooses_tables_but_every_reader_sets_the_columns() -> None:
    """Installing for one mapping must not stop announcing what another mapping of it reads."""
    every = resolve_mappings(top_level(), [JOBS, JOBS_QA, ORDERS])
    only_jobs = resolve_mappings(top_level(), [JOBS, JOBS_QA, ORDERS], ["jobs"])
    (table,) = tables_with_every_reader(only_jobs, every)
    assert table.names == ("jobs", "jobs_qa")
    assert trigger_spec(table).watched_columns == ("job", "release", "fab_order", "paint_color")
    only_orders = resolve_mappings(top_level(), [JOBS, JOBS_QA, ORDERS], ["orders"])
    assert [t.names for t in tables_with_every_reader(only_orders, every)] == [("orders",)]
    both = tables_with_every_reader(every, every)
    assert [str(t.table) for t in both] == ["public.jobs", "public.orders"]
