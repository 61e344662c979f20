"""The README's named-mappings example is a configuration that loads, and means what it says.

``test_docs.py`` checks every ``toml`` block as top-level settings; this test loads the
example of "Many tables, many sandboxes: named mappings" with its ``[[mappings]]``, as
``propagator --config`` does, and checks each mapping's own and inherited values.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from propagator.errors import ConfigurationError
from propagator.settings import Configuration, Settings, load_configuration
from tests.helpers import forget_settings_environment

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Many tables, many sandboxes: named mappings"
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PRODUCTION = "postgresql://propagator@prod-db.example.internal/app"
SANDBOX = "postgresql://propagator@sandbox-db.example.internal/app"
QA_SANDBOX = "postgresql://propagator@qa-db.example.internal/app"


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{HEADING}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _example() -> str:
    blocks = TOML_BLOCK.findall(_section())
    assert len(blocks) == 1, "the named-mappings section holds one toml example"
    return str(blocks[0])


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the environment: the file alone decides."""
    forget_settings_environment(monkeypatch)


def _load(tmp_path: Path, selection: tuple[str, ...] = ()) -> Configuration:
    path = tmp_path / "propagator.toml"
    path.write_text(_example(), encoding="utf-8")
    return load_configuration(path, selection=selection)


def _fields(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(source, target, transform name) of each field mapping."""
    return [
        (m.source, m.target, getattr(m.transform, "name", None)) for m in settings.field_mappings
    ]


def _url(value: SecretStr | None) -> str:
    assert value is not None
    return value.get_secret_value()


@pytest.mark.usefixtures("clean_environment")
def test_example_defines_jobs_orders_and_jobs_qa(tmp_path: Path) -> None:
    """Three named mappings, in the file's order, all selected by default."""
    configuration = _load(tmp_path)

    assert configuration.named
    assert configuration.defined == ("jobs", "orders", "jobs_qa")
    assert configuration.names == ("jobs", "orders", "jobs_qa")


@pytest.mark.usefixtures("clean_environment")
def test_each_mapping_inherits_what_it_leaves_out(tmp_path: Path) -> None:
    """Own values where a mapping sets them, the top level's everywhere else."""
    configuration = _load(tmp_path)
    top = configuration.settings
    jobs, orders, qa = (configuration.mapping(n) for n in ("jobs", "orders", "jobs_qa"))

    # jobs: only its field mappings are its own.
    assert _fields(jobs) == [
        ("fab_order", "fab_order", None),
        ("paint_color", "paint_color", "strip"),
    ]
    for mapping in (jobs, qa):
        assert mapping.production_table == top.production_table == "public.jobs"
        assert mapping.sandbox_table == top.sandbox_table == "public.jobs"
        assert mapping.key_columns == top.key_columns == ("job", "release")
        assert mapping.channel == top.channel == "propagator_jobs"
        assert mapping.reconcile_interval == top.reconcile_interval == timedelta(minutes=10)
    assert _url(jobs.sandbox_database_url) == _url(top.sandbox_database_url) == SANDBOX
    assert jobs.batch_size == top.batch_size == 5000

    # orders: its own table, key, fields, filter and schedule; databases and batch inherited.
    assert orders.production_table == orders.sandbox_table == "sales.orders"
    assert orders.key_columns == ("order_id",)
    assert _fields(orders) == [
        ("status", "status", None),
        ("total", "total", "decimal"),
    ]
    assert orders.production_filter == "created_at >= DATE '2024-01-01'"
    assert orders.reconcile_interval == timedelta(minutes=30)
    assert orders.channel == "propagator_sales_orders"
    assert _url(orders.sandbox_database_url) == SANDBOX
    assert orders.batch_size == 5000

    # jobs_qa: its own sandbox and batch size; fields, key and tables from the top level.
    assert _url(qa.sandbox_database_url) == QA_SANDBOX
    assert qa.batch_size == 1000
    assert qa.field_mappings == top.field_mappings
    assert [m.source for m in qa.field_mappings] == ["fab_order"]

    # Everything no mapping may set comes from the top level for all three.
    for mapping in (jobs, orders, qa):
        assert _url(mapping.production_database_url) == PRODUCTION
        assert mapping.reconcile_method == top.reconcile_method
        assert mapping.debounce_quiet == top.debounce_quiet
        assert mapping.history_schema == top.history_schema
        assert mapping.http_port == top.http_port


@pytest.mark.usefixtures("clean_environment")
def test_environment_urls_reach_mappings_without_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Secret's SANDBOX_DATABASE_URL wins over the top level, not over jobs_qa's own URL."""
    from_secret = "postgresql://propagator:CHANGE_ME@sandbox-db.example.internal/app"
    monkeypatch.setenv("SANDBOX_DATABASE_URL", from_secret)

    configuration = _load(tmp_path)

    assert _url(configuration.mapping("jobs").sandbox_database_url) == from_secret
    assert _url(configuration.mapping("orders").sandbox_database_url) == from_secret
    assert _url(configuration.mapping("jobs_qa").sandbox_database_url) == QA_SANDBOX


@pytest.mark.usefixtures("clean_environment")
def test_selection_by_option_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--mapping and PROPAGATOR_MAPPINGS choose mappings; the option wins over the variable."""
    assert _load(tmp_path, ("orders",)).names == ("orders",)
    monkeypatch.setenv("PROPAGATOR_MAPPINGS", "jobs,jobs_qa")
    assert _load(tmp_path).names == ("jobs", "jobs_qa")
    assert _load(tmp_path, ("orders",)).names == ("orders",)
    assert _load(tmp_path).defined == ("jobs", "orders", "jobs_qa")


@pytest.mark.usefixtures("clean_environment")
def test_error_lines_quoted_in_the_section_are_the_real_ones(tmp_path: Path) -> None:
    """Each rule's one-line error in the README is what loading such a file says."""
    section = _section()
    example = _example()
    broken = {
        "unknown mapping": (example, ("order",)),
        "the name is used twice": (
            example + '\n[[mappings]]\nname = "jobs"\nsandbox_table = "public.jobs_copy"\n',
            (),
        ),
        "key_columns (id) differ": (
            example + '\n[[mappings]]\nname = "jobs_by_id"\nkey_columns = ["id"]\n'
            'sandbox_table = "public.jobs_by_id"\n',
            (),
        ),
        "is already written by": (
            example + '\n[[mappings]]\nname = "jobs_copy"\nproduction_table = "public.jobs_v2"\n'
            'field_mappings = ["fab_order_v2->fab_order"]\n',
            (),
        ),
        "unknown key 'channel'": (
            example + '\n[[mappings]]\nname = "jobs"\nchannel = "propagator_other"\n',
            (),
        ),
    }
    for number, (fragment, (text, selection)) in enumerate(broken.items()):
        path = tmp_path / f"broken{number}.toml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigurationError) as raised:
            load_configuration(path, selection=selection)
        line = f"propagator: error: {raised.value}"
        assert fragment in line
        assert "\n" not in line
        quoted = [q for q in re.findall(r"`(propagator: error: [^`]*)`", section) if fragment in q]
        assert quoted, f"the section quotes no line with {fragment!r}"
        shown = quoted[0].removesuffix("…)")
        assert line.startswith(shown.rstrip("…")), f"{quoted[0]!r} is not {line!r}"
