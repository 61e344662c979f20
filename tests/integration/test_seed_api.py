"""The seed's programmatic API on SQLAlchemy engines, against two real servers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy.engine import Engine

from propagator import (
    DatabaseMappingService,
    FieldMapping,
    JobMappingResult,
    MappingStatistics,
    map_production_fab_order_to_sandbox,
)
from propagator.core.plan import FieldChange, MatchStatus
from propagator.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PermanentError,
    SchemaError,
)
from propagator.services.database_mapping import create_engine
from propagator.settings import load_settings
from tests.helpers import DatabasePair

PRODUCTION_ROWS = [
    (10001, "A", Decimal("510.00"), "red", "cut"),
    (10002, "B", Decimal("800.00"), "blue", "weld"),
    (10003, "C", Decimal("100.00"), "green", "paint"),
    (10004, "D", Decimal("42.00"), "black", "ship"),
]
SANDBOX_ROWS = [
    (10001, "A", Decimal("500.00"), "red", "cut"),
    (10002, "B", Decimal("750.00"), "white", "weld"),
    (10003, "C", Decimal("100.00"), "green", "paint"),
    (20000, "Z", Decimal("1.00"), "grey", "cut"),
]


@pytest.fixture
def engines(databases: DatabasePair) -> Iterator[tuple[Engine, Engine]]:
    databases.production.insert_jobs(PRODUCTION_ROWS)
    databases.sandbox.insert_jobs(SANDBOX_ROWS)
    production_engine = create_engine(databases.production.url)
    # The old postgres:// spelling is accepted and normalised.
    sandbox_engine = create_engine(databases.sandbox.url.replace("postgresql://", "postgres://"))
    try:
        yield production_engine, sandbox_engine
    finally:
        production_engine.dispose()
        sandbox_engine.dispose()


def test_pattern_2_programmatic_usage_as_written(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """The seed's Pattern 2 runs as written and syncs every differing fab_order."""
    production_engine, sandbox_engine = engines
    synced: list[str] = []

    try:
        stats = map_production_fab_order_to_sandbox(
            production_engine, sandbox_engine, dry_run=False
        )
        synced.append(f"Synced {stats.updated} jobs")
    except Exception as e:
        pytest.fail(f"Sync failed: {e}")

    assert synced == ["Synced 2 jobs"]
    assert isinstance(stats, MappingStatistics)
    assert (stats.matched, stats.not_found_in_sandbox, stats.not_found_in_production) == (3, 1, 1)
    sandbox = databases.sandbox.fab_orders()
    assert sandbox[(10001, "A")] == Decimal("510.00")
    assert sandbox[(10002, "B")] == Decimal("800.00")
    assert (10004, "D") not in sandbox


def test_pattern_3_advanced_custom_mapping_as_written(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """The seed's Pattern 3 (custom columns, transform=float, two fields) runs as written."""
    prod_engine, sandbox_engine = engines
    logged: list[str] = []
    my_logger = logged.append

    # Fetch with custom columns
    prod_df = DatabaseMappingService.fetch_jobs(
        prod_engine, ["job", "release", "fab_order", "paint_color", "stage"]
    )
    sandbox_df = DatabaseMappingService.fetch_jobs(
        sandbox_engine, ["job", "release", "fab_order", "paint_color", "stage"]
    )

    # Define mappings with transformations
    mappings = [
        FieldMapping("fab_order", "fab_order", transform=float),
        FieldMapping("paint_color", "paint_color"),
    ]

    # Map and apply
    results, stats = DatabaseMappingService.map_jobs_by_key(
        prod_df, sandbox_df, field_mappings=mappings
    )

    DatabaseMappingService.apply_field_updates(
        sandbox_engine, results, dry_run=False, log_callback=my_logger
    )

    assert all(isinstance(result, JobMappingResult) for result in results)
    assert dict(stats.differences) == {"fab_order": 2, "paint_color": 1}
    assert sorted(logged) == [
        "Job 10001-A: fab_order 500.00 → 510.0",
        "Job 10002-B: fab_order 750.00 → 800.0",
        "Job 10002-B: paint_color white → blue",
    ]
    rows = databases.sandbox.fetchall(
        "SELECT job, fab_order, paint_color FROM jobs WHERE job < 20000 ORDER BY job"
    )
    assert rows == [
        (10001, Decimal("510.00"), "red"),
        (10002, Decimal("800.00"), "blue"),
        (10003, Decimal("100.00"), "green"),
    ]


def test_convenience_dry_run_logs_every_change_and_writes_nothing(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """A dry run of the one-call sync reports each change to the callback and writes nothing."""
    before = databases.sandbox.fab_orders()
    lines: list[str] = []
    stats = map_production_fab_order_to_sandbox(*engines, log_callback=lines.append)
    assert lines == [
        "[DRY RUN] Job 10001-A: fab_order 500.00 → 510.00",
        "[DRY RUN] Job 10002-B: fab_order 750.00 → 800.00",
    ]
    assert (stats.rows_with_differences, stats.updated) == (2, 0)
    assert databases.sandbox.fab_orders() == before


def test_convenience_with_settings_and_a_refused_row(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """Settings choose the mapping; a row the sandbox refuses is reported, the rest applied."""
    databases.sandbox.execute(
        "ALTER TABLE jobs ADD CONSTRAINT known_colors CHECK (paint_color <> 'blue') NOT VALID"
    )
    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        field_mappings="fab_order,paint_color",
    )
    lines: list[str] = []
    stats = map_production_fab_order_to_sandbox(
        *engines, dry_run=False, log_callback=lines.append, settings=settings
    )
    assert (stats.updated, stats.failed) == (1, 1)
    assert [failure.key for failure in stats.failures] == [(10002, "B")]
    assert lines[0] == "Job 10001-A: fab_order 500.00 → 510.00"
    assert lines[-1].startswith("Job 10002-B rejected by the sandbox:")
    assert "known_colors" in lines[-1]
    assert databases.sandbox.fab_orders()[(10002, "B")] == Decimal("750.00")


def test_fetch_jobs_filters_with_where_and_quotes_identifiers(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """fetch_jobs returns dicts of the asked columns, filtered by the trusted WHERE."""
    databases.production.execute('CREATE SCHEMA "Odd Schema"')
    databases.production.execute(
        'CREATE TABLE "Odd Schema"."Job List" ("Job" int, "release" text, "Fab Order" numeric)'
    )
    databases.production.execute(
        """INSERT INTO "Odd Schema"."Job List" VALUES (1, 'A', 2.5), (2, 'B', 7)"""
    )
    production_engine, _ = engines
    rows = DatabaseMappingService.fetch_jobs(
        production_engine, ["job", "fab_order"], where="fab_order > 400"
    )
    assert sorted(rows, key=lambda row: row["job"]) == [
        {"job": 10001, "fab_order": Decimal("510.00")},
        {"job": 10002, "fab_order": Decimal("800.00")},
    ]
    odd = DatabaseMappingService.fetch_jobs(
        production_engine, ["Job", "Fab Order"], where='"Job" = 2', table='"Odd Schema"."Job List"'
    )
    assert odd == [{"Job": 2, "Fab Order": Decimal("7")}]


def test_fetch_jobs_where_runs_read_only(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """A WHERE clause with a side effect is refused: it runs in a READ ONLY transaction."""
    production_engine, _ = engines
    with pytest.raises(PermanentError, match="read-only transaction"):
        DatabaseMappingService.fetch_jobs(
            production_engine, ["job"], where="nextval('jobs_id_seq') > 0"
        )
    assert databases.production.scalar("SELECT last_value FROM jobs_id_seq") == 4


def test_fetch_jobs_where_cannot_widen_itself(engines: tuple[Engine, Engine]) -> None:
    """A WHERE that closes its parenthesis early is refused before any query; '%' is a pattern."""
    production_engine, _ = engines
    with pytest.raises(ConfigurationError, match=r"where has a '\)' without its '\('"):
        DatabaseMappingService.fetch_jobs(production_engine, ["job"], where="false) OR (true")
    rows = DatabaseMappingService.fetch_jobs(production_engine, ["job"], where="release LIKE 'B%'")
    assert rows == [{"job": 10002}]


def test_missing_column_or_table_is_named_up_front(engines: tuple[Engine, Engine]) -> None:
    """A missing column or table raises SchemaError naming the table and the column."""
    production_engine, sandbox_engine = engines
    with pytest.raises(SchemaError, match=r"column 'paint_colour' does not exist in table jobs"):
        DatabaseMappingService.fetch_jobs(production_engine, ["job", "paint_colour"])
    with pytest.raises(SchemaError, match=r"table public\.orders does not exist"):
        DatabaseMappingService.fetch_jobs(production_engine, ["job"], table="public.orders")
    with pytest.raises(SchemaError, match="'colour'"):
        DatabaseMappingService.update_job_fields(sandbox_engine, 10001, "A", {"colour": "red"})
    change = FieldChange("colour", "red", "blue")
    result = JobMappingResult((10001, "A"), MatchStatus.MATCHED, (change,))
    with pytest.raises(SchemaError, match="column 'colour' does not exist in table jobs"):
        DatabaseMappingService.apply_field_updates(sandbox_engine, [result], dry_run=False)


def test_create_job_lookup_accepts_dicts_and_dataclasses() -> None:
    """Rows may be dicts or dataclasses; NULL keys are left out and duplicate keys refused."""

    @dataclass
    class Job:
        job: int | None
        release: str
        fab_order: float

    lookup = DatabaseMappingService.create_job_lookup(
        [Job(1, "A", 5.0), {"job": 2, "release": "B", "fab_order": 6}, Job(None, "C", 7.0)]
    )
    assert set(lookup) == {(1, "A"), (2, "B")}
    assert lookup[(1, "A")]["fab_order"] == 5.0
    with pytest.raises(PermanentError, match="duplicate key 1-A"):
        DatabaseMappingService.create_job_lookup([Job(1, "A", 5.0), Job(1, "A", 6.0)])
    with pytest.raises(SchemaError, match="'release' is missing"):
        DatabaseMappingService.create_job_lookup([{"job": 1}])


def test_map_jobs_by_key_statistics_and_nulls() -> None:
    """Matching counts every case; NULL differs from a value both ways; 500 equals 500.0."""
    production = [
        {"job": 1, "release": "A", "fab_order": 500},
        {"job": 2, "release": "A", "fab_order": None},
        {"job": 3, "release": "A", "fab_order": 7},
        {"job": 4, "release": "A", "fab_order": None},
        {"job": 5, "release": "A", "fab_order": 1},
    ]
    sandbox = [
        {"job": 1, "release": "A", "fab_order": Decimal("500.0")},
        {"job": 2, "release": "A", "fab_order": 3},
        {"job": 3, "release": "A", "fab_order": None},
        {"job": 4, "release": "A", "fab_order": None},
        {"job": 9, "release": "A", "fab_order": 1},
    ]
    results, stats = DatabaseMappingService.map_jobs_by_key(production, sandbox)
    changed = {r.key: [(c.old, c.new) for c in r.changes] for r in results if r.changes}
    assert changed == {(2, "A"): [(3, None)], (3, "A"): [(None, 7)]}
    assert [r.key for r in results if r.status is MatchStatus.NOT_FOUND_IN_SANDBOX] == [(5, "A")]
    assert (stats.production_rows, stats.sandbox_rows, stats.matched) == (5, 5, 4)
    assert (stats.not_found_in_sandbox, stats.not_found_in_production) == (1, 1)
    assert stats.rows_with_differences == 2
    with pytest.raises(SchemaError, match="'fab_order' is missing from the production rows"):
        DatabaseMappingService.map_jobs_by_key([{"job": 1, "release": "A"}], sandbox)


def test_apply_field_updates_dry_run_and_refused_rows(
    engines: tuple[Engine, Engine], databases: DatabasePair
) -> None:
    """Dry run writes nothing; applying isolates a refused row and writes all the others."""
    prod_engine, sandbox_engine = engines
    columns = ["job", "release", "fab_order"]
    databases.production.execute("UPDATE jobs SET fab_order = -5 WHERE job = 10003")
    results, _ = DatabaseMappingService.map_jobs_by_key(
        DatabaseMappingService.fetch_jobs(prod_engine, columns),
        DatabaseMappingService.fetch_jobs(sandbox_engine, columns),
    )
    before = databases.sandbox.fab_orders()
    lines: list[str] = []
    dry = DatabaseMappingService.apply_field_updates(sandbox_engine, results, True, lines.append)
    assert (dry.dry_run, dry.planned, dry.updated) == (True, 3, 0)
    assert len(lines) == 3
    assert all(line.startswith("[DRY RUN] Job ") for line in lines)
    assert databases.sandbox.fab_orders() == before

    databases.sandbox.execute(
        "ALTER TABLE jobs ADD CONSTRAINT positive CHECK (fab_order >= 0) NOT VALID"
    )
    lines.clear()
    done = DatabaseMappingService.apply_field_updates(
        sandbox_engine, results, dry_run=False, log_callback=lines.append
    )
    assert (done.planned, done.updated, done.failed) == (3, 2, 1)
    assert done.failures[0].key == (10003, "C")
    assert "positive" in done.failures[0].error
    assert lines[-1].startswith("Job 10003-C rejected by the sandbox:")
    after = databases.sandbox.fab_orders()
    assert after[(10001, "A")] == Decimal("510.00")
    assert after[(10002, "B")] == Decimal("800.00")
    assert after[(10003, "C")] == Decimal("100.00")

    again = DatabaseMappingService.apply_field_updates(sandbox_engine, results, dry_run=False)
    assert (again.updated, again.failed) == (0, 1)  # already equal rows are not rewritten


def test_get_job_by_key(engines: tuple[Engine, Engine]) -> None:
    """get_job_by_key returns one row as a dict (all columns by default) or None."""
    production_engine, _ = engines
    job = DatabaseMappingService.get_job_by_key(production_engine, 10002, "B")
    assert job is not None
    assert list(job) == ["id", "job", "release", "fab_order", "paint_color", "stage", "updated_at"]
    assert (job["fab_order"], job["paint_color"]) == (Decimal("800.00"), "blue")
    picked = DatabaseMappingService.get_job_by_key(production_engine, 10002, "B", columns=["stage"])
    assert picked == {"stage": "weld"}
    assert DatabaseMappingService.get_job_by_key(production_engine, 10002, "Z") is None


def test_update_job_fields(engines: tuple[Engine, Engine], databases: DatabasePair) -> None:
    """update_job_fields writes only real changes, honours dry run and reports refusals."""
    _, sandbox_engine = engines
    update = DatabaseMappingService.update_job_fields
    assert update(sandbox_engine, 10001, "A", {"fab_order": 600}, dry_run=True) is True
    assert databases.sandbox.fab_orders()[(10001, "A")] == Decimal("500.00")
    assert update(sandbox_engine, 10001, "A", {"fab_order": 600, "stage": "ship"}) is True
    assert databases.sandbox.fetchall("SELECT fab_order, stage FROM jobs WHERE job = 10001") == [
        (Decimal("600.00"), "ship")
    ]
    assert update(sandbox_engine, 10001, "A", {"fab_order": 600.0}) is False
    assert update(sandbox_engine, 10001, "A", {"fab_order": None}) is True
    assert databases.sandbox.fab_orders()[(10001, "A")] is None
    with pytest.raises(PermanentError, match="no row in jobs has the key 10001-Q"):
        update(sandbox_engine, 10001, "Q", {"fab_order": 1})
    with pytest.raises(PermanentError, match="Job 10001-A rejected by the sandbox"):
        update(sandbox_engine, 10001, "A", {"fab_order": 10**12})
    with pytest.raises(ConfigurationError, match="key columns cannot be updated"):
        update(sandbox_engine, 10001, "A", {"release": "B"})


def test_unreachable_engine_names_the_database_with_password_masked() -> None:
    """An engine whose server is down raises DatabaseUnavailableError without the password."""
    engine = create_engine("postgres://app:hunter2secret@127.0.0.1:1/prod", connect_args={})
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            DatabaseMappingService.fetch_jobs(engine, ["job"])
    finally:
        engine.dispose()
    message = str(caught.value)
    assert "127.0.0.1:1/prod" in message
    assert "app:***@" in message
    assert "hunter2secret" not in message


def test_create_engine_refuses_other_schemes() -> None:
    """create_engine accepts only PostgreSQL URLs, with one clear error otherwise."""
    with pytest.raises(ConfigurationError, match="scheme mysql"):
        create_engine("mysql://u:p@host/db")


def test_engines_from_settings_pool_connections_per_the_setting(databases: DatabasePair) -> None:
    """engines_from_settings builds both engines from the seed's URLs with pool_size connections."""
    from propagator.services.database_mapping import engines_from_settings
    from propagator.settings import load_settings

    settings = load_settings(
        production_database_url=databases.production.url.replace("postgresql://", "postgres://"),
        sandbox_database_url=databases.sandbox.url,
        pool_size=3,
    )
    production, sandbox = engines_from_settings(settings)
    try:
        assert production.pool.size() == 3  # type: ignore[attr-defined]
        databases.production.insert_jobs([(1, "A", 510)])
        databases.sandbox.insert_jobs([(1, "A", 500)])
        statistics = map_production_fab_order_to_sandbox(production, sandbox, dry_run=False)
        assert statistics.updated == 1
    finally:
        production.dispose()
        sandbox.dispose()


def test_a_pool_of_one_connection_still_reconciles_in_many_batches(
    databases: DatabasePair,
) -> None:
    """pool_size=1: a reconcile needing four connections per engine opens them, never waits."""
    from propagator.services.database_mapping import engines_from_settings
    from propagator.settings import load_settings

    settings = load_settings(
        production_database_url=databases.production.url,
        sandbox_database_url=databases.sandbox.url,
        pool_size=1,
        batch_size=2,
    )
    databases.production.insert_jobs([(i, "A", 510 + i) for i in range(7)])
    databases.sandbox.insert_jobs([(i, "A", 500) for i in range(7)])
    production, sandbox = engines_from_settings(settings)
    try:
        statistics = map_production_fab_order_to_sandbox(
            production, sandbox, dry_run=False, settings=settings
        )
        assert statistics.updated == 7
        assert production.pool.size() == 1  # type: ignore[attr-defined]
    finally:
        production.dispose()
        sandbox.dispose()
    assert databases.sandbox.fab_orders() == databases.production.fab_orders()
