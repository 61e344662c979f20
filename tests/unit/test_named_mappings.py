"""[[mappings]] in the TOML file: resolution, inheritance, selection and one-line errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from propagator.errors import ConfigurationError
from propagator.settings import load_configuration

HEAD = """
production_database_url = "postgresql://user:pw-prod-1@prod.example/app"
sandbox_database_url = "postgresql://user:pw-sb-1@sandbox.example/app"
reconcile_interval = "7m"
"""

THREE = (
    HEAD
    + """
[[mappings]]
name = "jobs"

[[mappings]]
name = "orders"
production_table = "public.orders"
sandbox_table = "public.orders"
key_columns = ["id"]
field_mappings = ["status", "total->amount"]

[[mappings]]
name = "jobs_qa"
sandbox_database_url = "postgresql://user:pw-qa-1@qa.example/app"
reconcile_interval = "1m"
batch_size = 100
"""
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "propagator.toml"
    path.write_text(text)
    return path


def test_without_mappings_the_settings_are_the_one_mapping_default(tmp_path: Path) -> None:
    config = load_configuration(write(tmp_path, HEAD))
    assert config.names == ("default",)
    assert config.defined == ("default",)
    (mapping,) = config.mappings
    assert mapping.channel == "propagator_jobs"
    assert mapping.reconcile_interval == timedelta(minutes=7)


def test_each_mapping_inherits_what_it_leaves_out(tmp_path: Path) -> None:
    config = load_configuration(write(tmp_path, THREE))
    assert config.names == ("jobs", "orders", "jobs_qa")
    jobs, orders, qa = config.mappings
    assert (jobs.production_table, jobs.key_columns) == ("public.jobs", ("job", "release"))
    assert jobs.reconcile_interval == timedelta(minutes=7)
    assert orders.key_columns == ("id",)
    assert [m.describe() for m in orders.field_mappings] == ["status -> status", "total -> amount"]
    assert qa.sandbox_url().endswith("@qa.example/app")
    assert (qa.reconcile_interval, qa.batch_size) == (timedelta(minutes=1), 100)
    # One channel per production table: both jobs mappings share the top-level one.
    assert (jobs.channel, orders.channel, qa.channel) == (
        "propagator_jobs",
        "propagator_orders",
        "propagator_jobs",
    )


def test_selection_by_variable_or_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, THREE)
    monkeypatch.setenv("PROPAGATOR_MAPPINGS", "orders, jobs_qa")
    assert load_configuration(path).names == ("orders", "jobs_qa")
    assert load_configuration(path, selection=["jobs"]).names == ("jobs",)
    assert load_configuration(path).defined == ("jobs", "orders", "jobs_qa")


@pytest.mark.parametrize(
    ("mappings", "message"),
    [
        ('[[mappings]]\nproduction_table = "a"\n', "mapping #1: 'name' is required"),
        ('[[mappings]]\nname = "Bad-Name"\n', "mapping 'Bad-Name': 'name' is required"),
        (
            '[[mappings]]\nname = "a"\n[[mappings]]\nname = "a"\n',
            "mapping 'a': the name is used twice",
        ),
        ('[[mappings]]\nname = "a"\nchannel = "x"\n', "mapping 'a': unknown key 'channel'"),
        ('[[mappings]]\nname = "a"\nbatch_size = 0\n', "mapping 'a': invalid batch_size"),
        ('[[mappings]]\nname = "a"\nkey_columns = []\n', "mapping 'a': invalid key_columns"),
        (
            '[[mappings]]\nname = "a"\n[[mappings]]\nname = "b"\nkey_columns = ["job"]\n'
            'field_mappings = ["stage"]\n',
            "mapping 'b': key_columns (job) differ from mapping 'a'",
        ),
        (
            '[[mappings]]\nname = "a"\n[[mappings]]\nname = "b"\n',
            "mapping 'b': sandbox column public.jobs.fab_order is already written by mapping 'a'",
        ),
        ('mappings = ["a"]\n', "'mappings' must be [[mappings]] tables"),
    ],
)
def test_a_wrong_mapping_is_one_line_naming_it(tmp_path: Path, mappings: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_configuration(write(tmp_path, HEAD + mappings))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert "pw-prod-1" not in str(raised.value)


def test_an_unknown_selected_name_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown mapping 'nope'.*jobs, orders, jobs_qa"):
        load_configuration(write(tmp_path, THREE), selection=["nope"])
    with pytest.raises(ConfigurationError, match=r"unknown mapping 'x'.*: default$"):
        load_configuration(write(tmp_path, HEAD), selection=["x"])
