"""History of named mappings on real servers: each row names its mapping, reads and pruning follow.

Mappings writing into one sandbox share its history table; a mapping writing
elsewhere has its own. The migration turns an existing history into the
mapping ``default``'s, ``propagator history --mapping`` and ``GET /history?mapping=``
read the mappings asked for, and each mapping prunes only its own rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
from psycopg import sql

from propagator.cli import main
from propagator.core.plan import FieldChange, JobMappingResult, MatchStatus
from propagator.errors import ConfigurationError, ExitCode
from propagator.observability.pages import add_web_routes
from propagator.services import history as history_service
from propagator.services.history import History, HistoryReader, HistoryReaders
from propagator.services.history.schema import schema_statement
from propagator.services.sync import SyncSession, converge_keys
from propagator.settings import Configuration, Settings, load_configuration, load_settings
from tests.helpers import Database, DatabasePair, run_cli
from tests.integration.http_support import Running, request, serving

SCHEMA = "propagator"
SECRET = "hist-pw-5e1d"
TWO_MAPPINGS = """
[[mappings]]
name = "orders"
field_mappings = ["fab_order"]

[[mappings]]
name = "colours"
field_mappings = ["paint_color"]
"""


def change(job: int, field: str, old: Any, new: Any) -> JobMappingResult:
    return JobMappingResult((job, "A"), MatchStatus.MATCHED, (FieldChange(field, old, new),))


def record(database: Database, mapping: str, results: Sequence[JobMappingResult]) -> None:
    with database.connect() as conn, conn.transaction():
        history_service.record(conn, SCHEMA, results, "reconcile", mapping=mapping)


def set_up(*databases: Database) -> None:
    for database in databases:
        with database.connect() as conn:
            history_service.setup(conn, SCHEMA)


def configuration(databases: DatabasePair, tmp_path: Path, text: str) -> Configuration:
    path = tmp_path / "propagator.toml"
    path.write_text(text)
    return load_configuration(
        path,
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
    )


def with_password(url: str) -> str:
    """``url`` carrying a password (ignored by a trust login), to see it masked in output."""
    parts = urlsplit(url)
    if parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user or 'postgres'}:{SECRET}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
def second_sandbox(databases: DatabasePair) -> Iterator[Database]:
    """A second database on the sandbox server, as a second sandbox (its URL has a password)."""
    name = f"{databases.sandbox.name}_two"
    with databases.sandbox.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(databases.sandbox.url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        yield Database(with_password(url), name)
    finally:
        with databases.sandbox.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def history_cli(
    databases: DatabasePair,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    **env: str,
) -> tuple[int, str, str]:
    """``propagator history ARGS`` in this process: exit code, stdout, stderr."""
    monkeypatch.delenv("PROPAGATOR_MAPPINGS", raising=False)
    for name, value in databases.env(**env).items():
        monkeypatch.setenv(name, value)
    code = main(["history", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_migration_makes_existing_rows_the_default_mappings(
    databases: DatabasePair, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A history at version 1, with rows, upgrades in place: its rows become mapping `default`."""
    with databases.sandbox.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(schema_statement("history/schema_version.sql", SCHEMA))
        first = history_service.migrations()[0]
        conn.execute(first.statement(SCHEMA))
        conn.execute(
            "INSERT INTO propagator.schema_version (version, name) VALUES (%s, %s)",
            (first.version, first.name),
        )
        for job in (1, 2, 3):
            conn.execute(
                "INSERT INTO propagator.sync_history (batch_id, source, key, key_label, field, "
                "old_value, new_value) VALUES (%s, 'event', %s, %s, 'fab_order', '1', '2')",
                (uuid.uuid4(), f'[{job}, "A"]', f"{job}-A"),
            )
        result = history_service.setup(conn, SCHEMA)
        assert [m.name for m in result.applied] == ["mapping", "refresh_source", "webhook_cursors"]
        assert history_service.installed_version(conn, SCHEMA) == 4
    assert databases.sandbox.fetchall(
        "SELECT mapping, count(*) FROM propagator.sync_history GROUP BY mapping"
    ) == [("default", 3)]
    index = databases.sandbox.scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'sync_history_mapping'"
    )
    assert "(mapping, id)" in index
    # Without [[mappings]] the one mapping is `default`: its rows read as before, named.
    code, out, err = history_cli(databases, monkeypatch, capsys, "--format", "json")
    assert code == ExitCode.OK, err
    page = json.loads(out)
    assert [e["key_label"] for e in page["entries"]] == ["3-A", "2-A", "1-A"]
    assert {e["mapping"] for e in page["entries"]} == {"default"}
    # The table leaves the column out: without [[mappings]] every row is `default`.
    code, out, _ = history_cli(databases, monkeypatch, capsys)
    assert out.splitlines()[0].split()[:3] == ["ID", "APPLIED", "SOURCE"]


def converge_each(config: Configuration, keys: Sequence[tuple[int, str]]) -> None:
    """Converge ``keys`` once per mapping, each recording through its own ``History``."""
    for mapping in config.mappings:
        history = History(mapping)
        with SyncSession(mapping) as session:
            context = session.prepare()
            assert session.production is not None
            assert session.sandbox is not None
            history.setup(session.sandbox)
            converge_keys(
                context,
                session.production,
                session.sandbox,
                keys,
                source="reconcile",
                on_applied=history.hook(),
            )


@pytest.fixture
def shared(databases: DatabasePair, tmp_path: Path) -> Configuration:
    """Two mappings of one production table writing different columns of one sandbox."""
    databases.production.insert_jobs([(1, "A", 10, "red"), (2, "A", 20, "blue")])
    databases.sandbox.insert_jobs([(1, "A", 1, "red"), (2, "A", 2, "green")])
    config = configuration(databases, tmp_path, TWO_MAPPINGS)
    converge_each(config, [(1, "A"), (2, "A")])
    return config


def test_two_mappings_in_one_sandbox_record_their_names(
    databases: DatabasePair, shared: Configuration
) -> None:
    """Each mapping's writes land in the shared table under its own name."""
    assert databases.sandbox.fetchall(
        "SELECT mapping, key_label, field FROM propagator.sync_history ORDER BY id"
    ) == [
        ("orders", "1-A", "fab_order"),
        ("orders", "2-A", "fab_order"),
        ("colours", "2-A", "paint_color"),
    ]
    assert databases.sandbox.fab_orders() == {(1, "A"): 10, (2, "A"): 20}


def test_history_cli_filters_by_mapping(
    databases: DatabasePair,
    shared: Configuration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--mapping (repeatable) picks mappings; PROPAGATOR_MAPPINGS is the default; one table."""
    config = str(tmp_path / "propagator.toml")

    def read(*args: str, **env: str) -> list[tuple[str, str]]:
        code, out, err = history_cli(
            databases, monkeypatch, capsys, "--config", config, "--format", "json", *args, **env
        )
        assert code == ExitCode.OK, err
        return [(e["mapping"], e["key_label"]) for e in json.loads(out)["entries"]]

    assert read("--mapping", "orders") == [("orders", "2-A"), ("orders", "1-A")]
    assert read("--mapping", "colours") == [("colours", "2-A")]
    assert len(read()) == len(read("--mapping", "orders", "--mapping", "colours")) == 3
    assert read(PROPAGATOR_MAPPINGS="colours") == [("colours", "2-A")]
    assert read("--mapping", "orders", "--key", "1-A") == [("orders", "1-A")]
    code, out, err = history_cli(
        databases, monkeypatch, capsys, "--config", config, "--mapping", "parts"
    )
    assert code == ExitCode.USAGE
    assert "unknown mapping 'parts'" in err
    assert len(err.strip().splitlines()) == 1
    # One sandbox: one table, no heading.
    code, out, _ = history_cli(databases, monkeypatch, capsys, "--config", config)
    assert out.splitlines()[0].startswith("ID ")


def test_pruning_removes_expired_rows_of_every_mapping_and_keeps_recent_ones(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """Retention is by age for the whole table: a removed mapping's rows age out too."""
    set_up(databases.sandbox)
    record(databases.sandbox, "orders", [change(job, "fab_order", 0, job) for job in range(7)])
    record(databases.sandbox, "colours", [change(job, "paint_color", "a", "b") for job in range(5)])
    record(databases.sandbox, "removed", [change(job, "fab_order", 0, 1) for job in range(3)])
    databases.sandbox.execute(
        "UPDATE propagator.sync_history SET applied_at = now() - interval '40 days'"
    )
    record(databases.sandbox, "orders", [change(99, "fab_order", 0, 1)])
    record(databases.sandbox, "colours", [change(98, "paint_color", "a", "b")])
    config = configuration(databases, tmp_path, TWO_MAPPINGS)
    orders = History(config.mapping("orders"))
    with databases.sandbox.connect() as conn:
        pruned = orders.prune(conn, force=True)
        assert pruned is not None
        assert pruned.deleted == 15
    counts = "SELECT mapping, count(*) FROM propagator.sync_history GROUP BY mapping ORDER BY 1"
    assert databases.sandbox.fetchall(counts) == [("colours", 1), ("orders", 1)]


@contextmanager
def readers_served(running: Running, mappings: Sequence[Settings]) -> Iterator[HistoryReaders]:
    """``HistoryReaders`` for ``mappings`` behind the routes, as a daemon serves them."""
    readers = HistoryReaders(mappings)
    add_web_routes(
        running.server,
        status=running.probe.status_payload,
        history=readers,
        reconcile=None,
        api_token=None,
    )
    try:
        yield readers
    finally:
        readers.close()


@pytest.fixture
def history_http(shared: Configuration) -> Iterator[Running]:
    with serving() as running, readers_served(running, shared.mappings):
        yield running


def get_history(port: int, query: str) -> tuple[int, Any]:
    answer = request(port, "GET", "/history?" + query)
    return answer.status, answer.json()


def test_get_history_by_mapping(history_http: Running) -> None:
    """?mapping= (repeated or comma separated) picks mappings; unknown names are a 400."""
    port = history_http.port

    def mappings(query: str) -> list[str]:
        status, body = get_history(port, query)
        assert status == 200, body
        return [e["mapping"] for e in body["entries"]]

    assert mappings(urlencode({"mapping": "orders"})) == ["orders", "orders"]
    assert mappings("mapping=colours&limit=5") == ["colours"]
    assert mappings("mapping=orders,colours") == ["colours", "orders", "orders"]
    assert mappings("mapping=orders&mapping=colours") == ["colours", "orders", "orders"]
    assert mappings("") == ["colours", "orders", "orders"]  # all mappings share one sandbox
    status, body = get_history(port, "mapping=orders&key=1-A")
    assert (status, [e["key_label"] for e in body["entries"]]) == (200, ["1-A"])
    for query in ("mapping=parts", "mapping=orders,x'%3B--", "mapping=" + "p" * 900):
        status, body = get_history(port, query)
        assert status == 400, query
        assert "unknown mapping" in body["error"]
        assert "\n" not in body["error"]


def test_the_single_reader_refuses_other_mappings(
    databases: DatabasePair, shared: Configuration
) -> None:
    """``HistoryReader`` (one table, one mapping) reads it whole, and only its own name."""
    orders = shared.mapping("orders")
    reader = HistoryReader(History(orders), orders)
    try:
        assert reader.read({})["count"] == 3
        assert reader.read({"mapping": "orders"})["count"] == 2
        with pytest.raises(ConfigurationError, match="unknown mapping 'colours'"):
            reader.read({"mapping": "colours"})
    finally:
        reader.close()


@pytest.fixture
def two_sandboxes(
    databases: DatabasePair, second_sandbox: Database, tmp_path: Path
) -> Configuration:
    """`orders` writes into the usual sandbox, `colours` into a second one: two tables."""
    set_up(databases.sandbox, second_sandbox)
    record(
        databases.sandbox, "orders", [change(1, "fab_order", 0, 1), change(2, "fab_order", 0, 2)]
    )
    record(second_sandbox, "colours", [change(3, "paint_color", "a", "b")])
    text = TWO_MAPPINGS.replace(
        '["paint_color"]', f'["paint_color"]\nsandbox_database_url = "{second_sandbox.url}"'
    )
    return configuration(databases, tmp_path, text)


def test_history_cli_shows_each_sandbox_under_its_heading(
    databases: DatabasePair,
    two_sandboxes: Configuration,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Several history tables: one group each, headed by its masked URL and mappings."""
    config = str(tmp_path / "propagator.toml")
    code, out, err = history_cli(databases, monkeypatch, capsys, "--config", config)
    assert code == ExitCode.OK, err
    assert SECRET not in out
    headings = [line for line in out.splitlines() if line.startswith("sandbox ")]
    assert len(headings) == 2
    assert headings[0].endswith("mappings orders")
    assert headings[1].endswith("mappings colours")
    assert ":***@" in headings[1]
    assert "history schema propagator" in headings[0]

    code, out, err = history_cli(
        databases, monkeypatch, capsys, "--config", config, "--format", "json"
    )
    assert code == ExitCode.OK, err
    assert SECRET not in out
    groups = json.loads(out)
    assert [g["mappings"] for g in groups] == [["orders"], ["colours"]]
    assert [[e["key_label"] for e in g["entries"]] for g in groups] == [["2-A", "1-A"], ["3-A"]]
    assert groups[1]["sandbox"].endswith("_two")
    assert all(set(g) >= {"sandbox", "mappings", "entries"} for g in groups)

    # One mapping picked: one table, the output of a single sandbox.
    code, out, err = history_cli(
        databases,
        monkeypatch,
        capsys,
        "--config",
        config,
        "--format",
        "json",
        "--mapping",
        "colours",
    )
    assert code == ExitCode.OK, err
    assert [e["mapping"] for e in json.loads(out)["entries"]] == ["colours"]


def test_history_cli_names_the_next_page_of_each_sandbox(
    databases: DatabasePair, two_sandboxes: Configuration, tmp_path: Path
) -> None:
    """Paging several tables: the hint gives the --mapping options that read that table again."""
    result = run_cli(
        ["history", "--config", str(tmp_path / "propagator.toml"), "--limit", "1"], databases.env()
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert "(more: --mapping orders --before " in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_get_history_with_several_sandboxes_needs_a_mapping(
    two_sandboxes: Configuration,
) -> None:
    """No ?mapping= across sandboxes is a 400 saying to name one; one sandbox's names answer."""
    with serving() as running, readers_served(running, two_sandboxes.mappings):
        status, body = get_history(running.port, "")
        assert status == 400
        assert "name one with ?mapping=" in body["error"]
        status, body = get_history(running.port, "mapping=colours")
        assert status == 200, body
        assert [(e["mapping"], e["key_label"]) for e in body["entries"]] == [("colours", "3-A")]
        status, body = get_history(running.port, "mapping=orders")
        assert [e["key_label"] for e in body["entries"]] == ["2-A", "1-A"]
        status, body = get_history(running.port, "mapping=orders,colours")
        assert status == 400
        assert "different sandboxes" in body["error"]
        page = request(running.port, "GET", "/")
        assert page.status == 200
        assert SECRET.encode() not in page.body


def test_every_mapping_at_once_merges_the_newest_of_each_sandbox(
    two_sandboxes: Configuration,
) -> None:
    """?mapping=* (what the status page asks for): every sandbox's newest, newest first."""
    with serving() as running, readers_served(running, two_sandboxes.mappings):
        status, body = get_history(running.port, "mapping=*")
        assert status == 200, body
        assert [(e["mapping"], e["key_label"]) for e in body["entries"]] == [
            ("colours", "3-A"),
            ("orders", "2-A"),
            ("orders", "1-A"),
        ]
        assert body["next_before"] is None
        status, body = get_history(running.port, "mapping=*&before=5")
        assert status == 400
        page = request(running.port, "GET", "/")
        assert b"3-A" in page.body
        assert b"2-A" in page.body


def test_readers_group_mappings_by_sandbox_and_history_schema() -> None:
    """One reader per sandbox URL and history schema, in the order the mappings name them."""
    here, there = "postgresql://u@127.0.0.1:1/here", "postgresql://u@127.0.0.1:1/there"
    mappings = [
        load_settings(sandbox_database_url=here).named("a"),
        load_settings(sandbox_database_url=there).named("b"),
        load_settings(sandbox_database_url=here).named("c"),
        load_settings(sandbox_database_url=here, history_schema="audit").named("d"),
    ]
    readers = HistoryReaders(mappings)  # connects on the first read, not before
    try:
        assert [place.names for place in readers.sandboxes] == [("a", "c"), ("b",), ("d",)]
        assert readers.route("c,a") == (0, ("c", "a"))
        assert readers.route(" b ,b") == (1, ("b",))
        with pytest.raises(ConfigurationError, match="name one with"):
            readers.route(None)
    finally:
        readers.close()
