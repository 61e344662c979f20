"""The checksum reconcile against two real servers: same answers as streaming, less reading."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pytest

from propagator.adapters.postgres import stream_rows
from propagator.core.mapping import DEFAULT_KEY_COLUMNS, FieldMapping, MappingSpec
from propagator.core.plan import JobMappingResult, merge_compare
from propagator.core.report import ReconcileReport
from propagator.errors import ConfigurationError
from propagator.services import checksum_locate
from propagator.services.checksum import reconcile_checksum
from propagator.services.checksum_queries import SideQueries
from propagator.services.checksum_sample import DifferenceSample
from propagator.services.checksum_snapshot import Snapshot
from propagator.services.reconcile import reconcile
from tests.helpers import Database, DatabasePair, run_cli, wait_until
from tests.integration.checksum_support import Runner, comparable


@pytest.fixture
def runner(databases: DatabasePair) -> Iterator[Runner]:
    """A runner on the seed-shaped ``jobs`` tables of a fresh pair."""
    runner = Runner(databases.production, databases.sandbox)
    yield runner
    runner.close()


def assert_same_as_stream(
    runner: Runner, *, differences: int, missing: tuple[int, int] = (0, 0), **options: Any
) -> ReconcileReport:
    """Checksum and stream agree, and both find the number of differences the data holds.

    ``differences`` (rows present on both sides with a differing field) and
    ``missing`` (rows not found in the sandbox, in production) come from how the
    test built its tables, so a bug both methods share cannot pass.
    """
    stream, stream_found = runner.run("stream")
    checksum, checksum_found = runner.run("checksum", **options)
    assert checksum.method == "checksum"
    assert stream.method == "stream"
    for report, found in ((stream, stream_found), (checksum, checksum_found)):
        stats = report.statistics
        assert stats.rows_with_differences == differences, report.method
        assert len([r for r in found if r.changes]) == differences, report.method
        assert (stats.not_found_in_sandbox, stats.not_found_in_production) == missing
    assert comparable(checksum, checksum_found) == comparable(stream, stream_found)
    return checksum


def collation_or_default(db: Database, collation: str) -> str:
    """``collation`` when the server has it (ICU builds), else the database default."""
    found = db.scalar("SELECT count(*) FROM pg_collation WHERE collname = %s", [collation])
    return collation if found else "default"


def seed(databases: DatabasePair, rows: int = 300) -> None:
    production = [(1000 + i, "AB"[i % 2], Decimal(i) / 4) for i in range(rows)]
    databases.production.insert_jobs(production)
    databases.sandbox.insert_jobs(production)


def test_auto_uses_checksum_and_finds_what_streaming_finds(
    databases: DatabasePair, runner: Runner
) -> None:
    """By default the checksum compare runs and reports exactly the streaming statistics."""
    seed(databases)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job % 37 = 0")
    databases.sandbox.execute("UPDATE jobs SET fab_order = NULL WHERE job % 41 = 0")
    databases.production.execute("DELETE FROM jobs WHERE job % 53 = 0")
    databases.sandbox.execute("DELETE FROM jobs WHERE job % 59 = 0")
    report, _ = runner.run("auto")
    assert report.method == "checksum"
    assert report.fallback_reason is None
    # +1 where job % 37 = 0, NULL where job % 41 = 0; gone where % 53 (production), % 59.
    checksum = assert_same_as_stream(runner, differences=15, missing=(6, 6))
    stats = checksum.statistics
    assert stats.not_found_in_sandbox > 0
    assert stats.not_found_in_production > 0
    assert stats.differences["fab_order"] == stats.rows_with_differences > 0


@pytest.mark.parametrize("segments", [1, 2, 64])
def test_few_large_segments_give_the_same_answer(
    databases: DatabasePair, runner: Runner, segments: int
) -> None:
    """Segments holding many rows (one, two) still yield the exact streaming plan."""
    seed(databases, 200)
    databases.sandbox.execute("UPDATE jobs SET fab_order = 7 WHERE job IN (1003, 1100)")
    databases.production.execute("DELETE FROM jobs WHERE job = 1150")
    assert_same_as_stream(runner, differences=2, missing=(0, 1), segments=segments)


def test_md5_hashing_gives_the_same_answer(databases: DatabasePair, runner: Runner) -> None:
    """The md5 fallback hashing (servers that hash differently) finds the same differences."""
    seed(databases, 200)
    databases.sandbox.execute("UPDATE jobs SET fab_order = NULL WHERE job IN (1003, 1100)")
    databases.sandbox.execute("INSERT INTO jobs (job, release, fab_order) VALUES (1, 'Z', 1)")
    assert_same_as_stream(runner, differences=2, missing=(0, 1), hashing="md5")


def test_clean_tables_read_no_rows(databases: DatabasePair, runner: Runner) -> None:
    """Identical tables: every segment matches, every row counts as matched, nothing streamed."""
    seed(databases)
    streamed: list[int] = []
    report = runner.report()
    assert reconcile_checksum(
        runner.context, runner.open, report, apply=False, on_difference=lambda r: streamed.append(1)
    )
    stats = report.statistics
    assert (stats.production_rows, stats.sandbox_rows, stats.matched) == (300, 300, 300)
    assert stats.rows_with_differences == 0
    assert not streamed


def test_equal_numbers_in_different_spellings_are_equal(databases: DatabasePair) -> None:
    """numeric 500.00 = double 500 = integer 500, 0.1 = 0.1; 0.30000000000000004 ≠ 0.3."""
    databases.production.execute(
        "CREATE TABLE t (k integer PRIMARY KEY, a numeric, b numeric(12, 2), c integer, d real)"
    )
    databases.sandbox.execute(
        "CREATE TABLE t (k integer PRIMARY KEY, a double precision, b numeric, c numeric, "
        "d double precision)"
    )
    databases.production.execute(
        "INSERT INTO t VALUES (1, 500.00, 500, 500, 0.1), (2, 0.1, 0.10, -0, 1.5), "
        "(3, 0.3, 1, 1, 'NaN'), (4, 'NaN', NULL, NULL, 'Infinity'), (5, 1e-7, 2, 3, 0.25)"
    )
    databases.sandbox.execute(
        "INSERT INTO t VALUES (1, 500, 500.0000, 500.0, 0.1), (2, 0.1, 0.1, 0, 1.5), "
        "(3, 0.30000000000000004, 1.00, 1.000, 'NaN'), (4, 'NaN', NULL, NULL, 'Infinity'), "
        "(5, 1e-7, 2.01, 3, 0.25)"
    )
    spec = MappingSpec(("k",), tuple(FieldMapping(c, c) for c in "abcd"))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        report = assert_same_as_stream(runner, differences=2)
    finally:
        runner.close()
    assert dict(report.statistics.differences) == {"a": 1, "b": 1}  # keys 3 and 5
    assert report.statistics.rows_with_differences == 2


def test_nan_zero_and_signs_differ_in_columns_that_cannot_hold_infinity(
    databases: DatabasePair,
) -> None:
    """numeric(p, s) on both sides skips the NaN test: NaN, 0, 7 and -7 still all differ."""
    databases.production.execute("CREATE TABLE t (k numeric(6) PRIMARY KEY, a numeric(12, 2))")
    databases.sandbox.execute("CREATE TABLE t (k integer PRIMARY KEY, a numeric(14, 4))")
    values = ["NaN", "0", "7", "-7", "0.01", "-0.01", None]
    pairs = [(a, b) for a in values for b in values]
    for db, side in ((databases.production, 0), (databases.sandbox, 1)):
        with db.connect() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO t VALUES (%s, %s::numeric)",
                [(k - 30, pair[side]) for k, pair in enumerate(pairs)],  # negative keys too
            )
    spec = MappingSpec(("k",), (FieldMapping("a", "a"),))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        for segments in (1, 64):
            report = assert_same_as_stream(
                runner, differences=len(pairs) - len(values), segments=segments
            )
    finally:
        runner.close()
    assert report.statistics.matched == len(pairs)


SPECIAL_VALUES = {
    # A key moved to another key with the same value, and values changing in step
    # between zero, NaN and the infinities: a row hash that hands back its seed for
    # such values (as hashing numeric and double precision does) must still depend
    # on the key non-linearly, or rows of one segment cancel out.
    "double zero, moved key": (
        "double precision",
        "(1, 0), (3, 5), (5, 0), (6, 0)",
        "(2, 0), (3, 5), (5, 0), (6, 0)",
        (0, 1, 1),
    ),
    "numeric NaN, moved key": ("numeric", "(1, 'NaN'), (3, 5)", "(2, 'NaN'), (3, 5)", (0, 1, 1)),
    "numeric Infinity to NaN": (
        "numeric",
        "(1, 'Infinity'), (2, 'Infinity'), (3, '-Infinity'), (4, '-Infinity')",
        "(1, 'NaN'), (2, 'NaN'), (3, 0), (4, 0)",
        (4, 0, 0),
    ),
    "numeric(12,2) zero to NaN": (
        "numeric(12, 2)",
        ", ".join(f"({k}, 0)" for k in range(1, 41)),
        ", ".join(f"({k}, 'NaN')" for k in range(1, 41)),
        (40, 0, 0),
    ),
    "double zero to minus zero and back": (
        "double precision",
        "(1, 0), (2, '-0'), (3, 0)",
        "(1, '-0'), (2, 0), (3, 0)",
        (0, 0, 0),
    ),
}


@pytest.mark.parametrize("case", sorted(SPECIAL_VALUES))
def test_values_hashing_to_their_seed_keep_their_row_apart(
    databases: DatabasePair, case: str
) -> None:
    """Zero, NaN and the infinities in one segment: moved keys and changes are still found."""
    column_type, production_rows, sandbox_rows, expected = SPECIAL_VALUES[case]
    for db, rows in ((databases.production, production_rows), (databases.sandbox, sandbox_rows)):
        db.execute(f"CREATE TABLE t (k integer PRIMARY KEY, v {column_type})")
        db.execute(f"INSERT INTO t VALUES {rows}")
    spec = MappingSpec(("k",), (FieldMapping("v", "v"),))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    differences, missing_in_sandbox, missing_in_production = expected
    try:
        for segments in (1, 64):
            assert_same_as_stream(
                runner,
                differences=differences,
                missing=(missing_in_sandbox, missing_in_production),
                segments=segments,
                hashing="builtin",
            )
    finally:
        runner.close()


def test_clean_tables_take_one_pass_and_a_difference_adds_the_segmented_one(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal tables are proven equal by one ungrouped pass; only a difference is located."""
    seed(databases)
    passes: list[str] = []
    original = Snapshot.digests

    def counting(self: Any, query: Any) -> Any:
        passes.append(self.side)
        return original(self, query)

    monkeypatch.setattr(Snapshot, "digests", counting)
    report, found = runner.run("checksum")
    assert report.statistics.matched == 300
    assert not found
    assert sorted(passes) == ["production", "sandbox"]
    passes.clear()
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 1007")
    report, found = runner.run("checksum")
    assert [result.key for result in found if result.changes] == [(1007, "B")]
    # the whole tables, the segments, the row hashes of the differing segment
    assert sorted(passes) == ["production"] * 3 + ["sandbox"] * 3


def test_nulls_never_collide_with_values(databases: DatabasePair) -> None:
    """NULL differs from '', 'NULL', '~' and 0 on either side; NULL equals NULL."""
    ddl = "CREATE TABLE t (k text PRIMARY KEY, a text, b text, n numeric)"
    databases.production.execute(ddl)
    databases.sandbox.execute(ddl)
    rows = [
        ("1", None, "", 0),
        ("2", "", None, None),
        ("3", "NULL", None, 0),
        ("4", None, "~", None),
        ("5", None, None, None),
        ("6", "x", "y", 1),
    ]
    swapped = [(k, b, a, None if n == 0 else (0 if n is None else n)) for k, a, b, n in rows]
    swapped[-2:] = rows[-2:]
    for db, data in ((databases.production, rows), (databases.sandbox, swapped)):
        with db.connect() as conn, conn.cursor() as cursor:
            cursor.executemany("INSERT INTO t VALUES (%s, %s, %s, %s)", data)
    spec = MappingSpec(
        ("k",), (FieldMapping("a", "a"), FieldMapping("b", "b"), FieldMapping("n", "n"))
    )
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        assert_same_as_stream(runner, differences=4)
        assert_same_as_stream(runner, differences=4, hashing="md5")
    finally:
        runner.close()


SWAPS = {
    # Two fields exchanging their values (row 1), and two rows exchanging theirs.
    "fields and rows": ("(1, 'y', 'x'), (2, 'r', 's'), (3, 'p', 'q')", 3),
    # Only two rows of the one segment exchanging their values: a digest combining
    # key and value hashes linearly (XOR or sum of key ^ value) would not change.
    "rows alone": ("(1, 'x', 'y'), (2, 'r', 's'), (3, 'p', 'q')", 2),
}


@pytest.mark.parametrize("hashing", ["builtin", "md5"])
@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_swapped_values_are_found(
    databases: DatabasePair, swap: str, hashing: Literal["builtin", "md5"]
) -> None:
    """Values exchanged between fields or between rows of one segment are differences."""
    ddl = "CREATE TABLE t (k integer PRIMARY KEY, a text, b text)"
    databases.production.execute(ddl)
    databases.sandbox.execute(ddl)
    sandbox_rows, differing = SWAPS[swap]
    databases.production.execute("INSERT INTO t VALUES (1, 'x', 'y'), (2, 'p', 'q'), (3, 'r', 's')")
    databases.sandbox.execute(f"INSERT INTO t VALUES {sandbox_rows}")
    spec = MappingSpec(("k",), (FieldMapping("a", "a"), FieldMapping("b", "b")))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        report = assert_same_as_stream(runner, differences=differing, segments=1, hashing=hashing)
    finally:
        runner.close()
    assert report.statistics.rows_with_differences == differing


def test_text_keys_segment_without_collation(databases: DatabasePair) -> None:
    """Unicode text keys on servers with different collations match row for row."""
    for db, collation in ((databases.production, "C"), (databases.sandbox, "und-x-icu")):
        db.execute(
            f'CREATE TABLE t (k text COLLATE "{collation_or_default(db, collation)}" '
            "PRIMARY KEY, v numeric)"
        )
    keys = ["a", "B", "é", "e\u0301", "Z", "ß", "中", "🙂", "a b", "", " ", "A"]
    for db in (databases.production, databases.sandbox):
        with db.connect() as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO t VALUES (%s, %s)", [(k, i) for i, k in enumerate(keys)]
            )
    databases.sandbox.execute("UPDATE t SET v = v + 1 WHERE k IN ('é', '🙂', '')")
    databases.sandbox.execute("DELETE FROM t WHERE k = 'ß'")
    spec = MappingSpec(("k",), (FieldMapping("v", "v"),))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        report = assert_same_as_stream(runner, differences=3, missing=(1, 0), segments=2)
    finally:
        runner.close()
    assert report.statistics.rows_with_differences == 3
    assert report.statistics.not_found_in_sandbox == 1


def test_transforms_with_sql_equivalents_run_in_the_server(databases: DatabasePair) -> None:
    """strip, blank_to_null, float, int, decimal and text are compared by checksum exactly."""
    databases.production.execute(
        "CREATE TABLE t (k integer PRIMARY KEY, s text, b text, f numeric, i numeric, "
        "d double precision, n integer)"
    )
    databases.sandbox.execute(
        "CREATE TABLE t (k integer PRIMARY KEY, s text, b text, f double precision, i bigint, "
        "d numeric, n text)"
    )
    databases.production.execute(
        "INSERT INTO t VALUES (1, E'\\u3000 x \\t', E' \\u2003', 0.1, 2.7, 0.1, 5), "
        "(2, 'y', '', 1.5, -2.7, 2.5, -3), (3, ' z', 'w', 3, 9.99, 3, 7)"
    )
    databases.sandbox.execute(
        "INSERT INTO t VALUES (1, 'x', NULL, 0.1, 2, 0.1, '5'), "
        "(2, 'y ', '', 1.5, -2, 2.5, '-3'), (3, 'z', 'w', 3.01, 10, 3, '7 ')"
    )
    spec = MappingSpec(
        ("k",),
        (
            FieldMapping("s", "s", "strip"),
            FieldMapping("b", "b", "blank_to_null"),
            FieldMapping("f", "f", "float"),
            FieldMapping("i", "i", "int"),
            FieldMapping("d", "d", "decimal"),
            FieldMapping("n", "n", "text"),
        ),
    )
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        report = assert_same_as_stream(runner, differences=2)  # rows 2 (s, b) and 3 (f, i, n)
        assert dict(report.statistics.differences) == {"s": 1, "b": 1, "f": 1, "i": 1, "n": 1}
        assert_same_as_stream(runner, differences=2, hashing="md5")
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("mapping", "reason"),
    [
        (FieldMapping("stage", "stage", str), "callable"),
        (FieldMapping("paint_color", "paint_color", "upper"), "no exact SQL equivalent"),
        (FieldMapping("updated_at", "updated_at"), "timestamp with time zone"),
    ],
)
def test_falls_back_to_streaming_and_says_why(
    databases: DatabasePair, mapping: FieldMapping, reason: str
) -> None:
    """A field the servers cannot canonicalise makes that run stream, with the reason reported."""
    seed(databases, 20)
    databases.sandbox.execute("UPDATE jobs SET fab_order = 1 WHERE job = 1005")
    spec = MappingSpec(DEFAULT_KEY_COLUMNS, (FieldMapping("fab_order", "fab_order"), mapping))
    runner = Runner(databases.production, databases.sandbox, spec)
    try:
        report, found = runner.run("auto")
        assert report.method == "stream"
        assert report.fallback_reason is not None
        assert reason in report.fallback_reason
        assert (1005, "B") in [r.key for r in found]
        assert comparable(report, found) == comparable(*runner.run("stream"))
        with pytest.raises(ConfigurationError, match="reconcile_method=checksum"):
            runner.run("checksum")
    finally:
        runner.close()


def test_no_unique_key_index_falls_back(databases: DatabasePair) -> None:
    """Without a unique index on the keys, duplicates could hide in a digest: stream instead."""
    for db in (databases.production, databases.sandbox):
        db.execute("CREATE TABLE t (k integer, v numeric)")
    databases.production.execute("INSERT INTO t VALUES (1, 1), (2, 2)")
    databases.sandbox.execute("INSERT INTO t VALUES (1, 1), (2, 3)")
    spec = MappingSpec(("k",), (FieldMapping("v", "v"),))
    runner = Runner(
        databases.production, databases.sandbox, spec, production_table="t", sandbox_table="t"
    )
    try:
        report, found = runner.run("auto")
    finally:
        runner.close()
    assert report.method == "stream"
    assert report.fallback_reason is not None
    assert "unique index" in report.fallback_reason
    assert [r.key for r in found] == [(2,)]


def test_apply_converges_and_never_writes_a_stale_value(
    databases: DatabasePair, runner: Runner
) -> None:
    """--apply goes through converge_keys: a row changed after the compare gets its newest value."""
    seed(databases, 120)
    databases.sandbox.execute("UPDATE jobs SET fab_order = -1 WHERE job % 10 = 0")
    changed: list[tuple[Any, ...]] = []

    def change_production(result: JobMappingResult) -> None:
        if not changed:  # production moves on while the compare is still running
            databases.production.execute(
                "UPDATE jobs SET fab_order = 999.5 WHERE job = %s AND release = %s", result.key
            )
            changed.append(result.key)

    report = runner.report(apply=True)
    assert reconcile_checksum(
        runner.context, runner.open, report, apply=True, on_difference=change_production
    )
    assert report.statistics.updated == 12
    assert databases.sandbox.fab_orders() == databases.production.fab_orders()
    assert databases.sandbox.fab_orders()[changed[0]] == Decimal("999.5")
    again, found = runner.run("auto")
    assert again.method == "checksum"
    assert not found
    assert again.statistics.matched == 120


def test_apply_in_many_batches_writes_each_once_and_isolates_a_refused_row(
    databases: DatabasePair, runner: Runner
) -> None:
    """Differences over many batches (two converge at once): each written and reported once."""
    seed(databases, 1000)  # fab_order = (job - 1000) / 4
    databases.sandbox.execute("UPDATE jobs SET fab_order = -1 WHERE job % 3 = 0")
    databases.sandbox.execute(
        "ALTER TABLE jobs ADD CONSTRAINT unlucky CHECK (fab_order <> 100.25) NOT VALID"
    )
    hooked: list[tuple[Any, ...]] = []
    inside = 0

    def on_applied(conn: Any, results: Sequence[JobMappingResult], source: str) -> None:
        nonlocal inside
        inside += 1
        assert inside == 1, "two batches reported at once"
        hooked.extend(r.key for r in results)
        inside -= 1

    report = runner.report(apply=True)
    reconcile(runner.context, runner.open, report, apply=True, on_applied=on_applied)
    differing = [key for key in databases.production.fab_orders() if key[0] % 3 == 0]
    refused = (1401, "B")  # fab_order 100.25
    assert report.statistics.rows_with_differences == len(differing) == 333
    assert report.statistics.updated == len(differing) - 1
    assert [f.key for f in report.statistics.failures] == [refused]
    assert sorted(hooked) == sorted(k for k in differing if k != refused)
    production, sandbox = databases.production.fab_orders(), databases.sandbox.fab_orders()
    assert {k for k in production if production[k] != sandbox[k]} == {refused}


def test_both_servers_are_read_at_once(databases: DatabasePair, runner: Runner) -> None:
    """The sandbox is already being read while production's read waits (here, on a lock)."""
    seed(databases, 30_000)  # more than the reader buffers: its snapshot stays open
    databases.sandbox.execute("UPDATE jobs SET fab_order = -1 WHERE job % 10 = 0")
    blocker = psycopg.connect(databases.production.url)
    blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")  # until commit
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["report"] = runner.run("stream")[0]
        except BaseException as error:  # re-raised by the test
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_until(
            lambda: databases.sandbox.scalar(
                "SELECT count(*) FROM pg_locks WHERE relation = 'public.jobs'::regclass "
                "AND mode = 'AccessShareLock' AND granted AND pid <> pg_backend_pid()"
            ),
            what="the sandbox read to start while production is locked",
        )
    finally:
        blocker.commit()
        blocker.close()
        worker.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].statistics.rows_with_differences == 3000


def scatter(databases: DatabasePair, rows: int, *, changed: str, deleted: str) -> None:
    """``rows`` equal rows, then ``fab_order + 1`` in the sandbox where ``changed`` holds and
    the production rows where ``deleted`` holds gone."""
    seed(databases, rows)
    databases.sandbox.execute(f"UPDATE jobs SET fab_order = fab_order + 1 WHERE {changed}")
    databases.production.execute(f"DELETE FROM jobs WHERE {deleted}")


def count_rows_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The rows each side's snapshot reads from now on, counted as they are read."""
    read = {"production": 0, "sandbox": 0}
    original = Snapshot.rows

    def counting(self: Any, query: Any, **options: Any) -> Iterator[tuple[Any, ...]]:
        for row in original(self, query, **options):
            read[self.side] += 1
            yield row

    monkeypatch.setattr(Snapshot, "rows", counting)
    return read


def test_scattered_differences_are_refined_and_read_sparingly(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differences in most coarse segments: a finer pass leaves few rows to read, same plan."""
    scatter(databases, 2000, changed="job % 50 = 7", deleted="job = 1999")
    read = count_rows_read(monkeypatch)
    report = assert_same_as_stream(
        runner,
        differences=40,
        missing=(0, 1),
        segments=32,
        fine_segments=2048,
        refine_above=0.0,
        hashed_rows_max=0,  # more rows than it would hash one by one: the finer pass
    )
    assert report.statistics.rows_with_differences == 40
    assert report.statistics.matched == 1999  # every row present on both sides
    assert 0 < read["production"] < 300
    assert 0 < read["sandbox"] < 300


def test_scattered_differences_read_only_the_rows_whose_hashes_are_unmatched(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differences in most segments: each side's row hashes pick out exactly what differs."""
    scatter(databases, 2000, changed="job % 50 = 7", deleted="job = 1999")
    databases.sandbox.execute("UPDATE jobs SET fab_order = NULL WHERE job = 1008")
    databases.sandbox.execute("INSERT INTO jobs (job, release, fab_order) VALUES (1, 'Z', 1)")
    read = count_rows_read(monkeypatch)
    report = assert_same_as_stream(
        runner, differences=41, missing=(0, 2), segments=32, refine_above=0.0
    )
    assert report.statistics.matched == 1999
    assert read == {"production": 41, "sandbox": 43}  # the changed rows, and the extra ones


@pytest.mark.parametrize(
    ("narrowing", "limits"),
    [
        ("row hashes", {"refine_above": 0.0}),
        ("segments", {"hashed_rows_max": 0, "refine_above": 2.0}),
        ("finer pass", {"hashed_rows_max": 0, "refine_above": 0.0, "fine_segments": 8192}),
        # Past 2^20 segments their numbers are listed, not a bitmap.
        (
            "finer pass, listed",
            {"hashed_rows_max": 0, "refine_above": 0.0, "fine_segments": 1 << 21},
        ),
    ],
)
def test_hundreds_of_differing_segments_are_narrowed_down_exactly(
    databases: DatabasePair,
    runner: Runner,
    monkeypatch: pytest.MonkeyPatch,
    narrowing: str,
    limits: dict[str, Any],
) -> None:
    """Hundreds of differing segments: each way of narrowing them down reads their rows only."""
    scatter(databases, 4000, changed="job % 13 = 5", deleted="job % 400 = 3")
    read = count_rows_read(monkeypatch)
    report = assert_same_as_stream(
        runner, differences=307, missing=(0, 10), segments=1024, **limits
    )
    assert report.statistics.matched == 3990
    # Only rows of differing segments are read (about 4 a segment), never all 4000;
    # picked by their hashes, exactly the differing ones.
    assert 317 <= read["sandbox"] < 2000, narrowing
    if narrowing == "row hashes":
        assert read == {"production": 307, "sandbox": 317}


def segmented_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The segment count of every segmented pass from now on, one entry a side."""
    counts: list[int] = []
    original = SideQueries.digests

    def recording(self: SideQueries, count: int) -> Any:
        counts.append(count)
        return original(self, count)

    monkeypatch.setattr(SideQueries, "digests", recording)
    return counts


def seed_analyzed(databases: DatabasePair) -> None:
    """4000 rows both sides know the size of: 256 segments, a sample of a quarter of its blocks."""
    seed(databases, 4000)
    for db in (databases.production, databases.sandbox):
        db.execute("ANALYZE jobs")


def test_a_sample_of_few_differences_groups_them_into_fewer_segments(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few sampled rows differ: the sparse count; many: the usual one; exact either way."""
    seed_analyzed(databases)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job IN (1007, 3999)")
    counts = segmented_passes(monkeypatch)
    assert_same_as_stream(runner, differences=2, sparse_segments=32)
    assert counts == [32, 32]
    counts.clear()
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job % 5 = 1")
    assert_same_as_stream(runner, differences=802, sparse_segments=32)
    assert counts == [256, 256]


def test_a_sample_reads_only_the_rows_the_production_filter_keeps(
    databases: DatabasePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter (a % in it) applies to the sample: rows it leaves out never count as differing."""
    seed_analyzed(databases)
    databases.production.execute("UPDATE jobs SET stage = 'x%' WHERE job % 2 = 0")
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job % 2 = 1")  # filtered out
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 1006")
    runner = Runner(databases.production, databases.sandbox, production_filter="stage LIKE 'x%%'")
    counts = segmented_passes(monkeypatch)
    try:
        assert_same_as_stream(runner, differences=1, missing=(0, 2000), sparse_segments=32)
    finally:
        runner.close()
    assert counts == [32, 32]


def test_a_sample_of_a_table_grown_since_its_statistics_stays_small(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stale statistics (4000 rows, now 44,000) ask for a quarter of the blocks: capped."""
    seed_analyzed(databases)
    grown = [(100_000 + i, "C", Decimal(i)) for i in range(40_000)]
    for db in (databases.production, databases.sandbox):
        db.insert_jobs(grown)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 1007")
    samples: list[tuple[int, int, int]] = []
    original = checksum_locate.sampled_segments

    def recording(*args: Any) -> tuple[int, int, int]:
        samples.append(original(*args))
        return samples[-1]

    monkeypatch.setattr(checksum_locate, "sampled_segments", recording)
    assert_same_as_stream(runner, differences=1, sparse_segments=128)
    [(segments, sampled, differing)] = samples
    assert (segments, sampled) == (128, 5000)
    assert differing <= 1


def test_a_sample_a_server_refuses_leaves_the_usual_segments(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys the sandbox cannot take as sent: its savepoint undone, the snapshot reads on."""
    seed_analyzed(databases)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job = 1007")
    original = DifferenceSample.of

    def unsendable(*args: Any) -> DifferenceSample:
        sample = original(*args)
        return dataclasses.replace(sample, sandbox_key_types=("point", "point"))

    monkeypatch.setattr(DifferenceSample, "of", unsendable)
    counts = segmented_passes(monkeypatch)
    assert_same_as_stream(runner, differences=1, sparse_segments=32)
    assert counts == [256, 256]


def test_rows_located_by_ctid_are_read_from_the_snapshot_not_as_changed_since(
    databases: DatabasePair, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row changed after its hash was taken is read as the snapshot saw it, by its old ctid."""
    seed(databases, 2000)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE job % 50 = 7")
    before, _ = runner.run("stream")
    original = Snapshot.rows
    changed: list[str] = []

    def changing_first(self: Any, query: Any, **options: Any) -> Iterator[tuple[Any, ...]]:
        if not changed:  # another session rewrites every differing row and commits
            databases.sandbox.execute("UPDATE jobs SET fab_order = -5 WHERE job % 50 = 7")
            changed.append(self.side)
        yield from original(self, query, **options)

    monkeypatch.setattr(Snapshot, "rows", changing_first)
    report, found = runner.run("checksum", segments=32, refine_above=0.0)
    assert changed
    assert report.statistics.rows_with_differences == before.statistics.rows_with_differences
    assert {result.key: result.changes[0].old for result in found} == {
        (1000 + i, "AB"[i % 2]): Decimal(i) / 4 + 1 for i in range(2000) if (1000 + i) % 50 == 7
    }


def test_a_partitioned_table_is_narrowed_down_by_row_hashes(databases: DatabasePair) -> None:
    """ctids repeat between partitions: there the rows are picked by their hashes instead."""
    databases.sandbox.execute(
        "CREATE TABLE parts (job integer, release text, fab_order numeric(12, 2), "
        "PRIMARY KEY (job, release)) PARTITION BY RANGE (job)"
    )
    databases.sandbox.execute(
        "CREATE TABLE parts_a PARTITION OF parts FOR VALUES FROM (0) TO (2000)"
    )
    databases.sandbox.execute(
        "CREATE TABLE parts_b PARTITION OF parts FOR VALUES FROM (2000) TO (9000)"
    )
    rows = [(1000 + i * 3, "AB"[i % 2], Decimal(i) / 4) for i in range(1000)]
    databases.production.insert_jobs(rows)
    databases.sandbox.insert_jobs(rows, table="public.parts")
    databases.sandbox.execute("UPDATE parts SET fab_order = fab_order + 1 WHERE job % 40 = 0")
    databases.sandbox.execute("DELETE FROM parts WHERE job = 1003")
    runner = Runner(databases.production, databases.sandbox, sandbox_table="public.parts")
    try:
        report = assert_same_as_stream(
            runner, differences=25, missing=(1, 0), segments=32, refine_above=0.0
        )
    finally:
        runner.close()
    assert report.statistics.matched == 999


@pytest.mark.parametrize("workers", [0, 1, 64])
def test_a_reconcile_uses_no_more_parallel_workers_than_configured(
    databases: DatabasePair, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Each whole-table query of either method may use at most ``workers`` parallel workers,
    and never more than the server itself allows."""
    seed(databases, 200)
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job % 7 = 0")
    (server_limit,) = databases.production.fetchall("SHOW max_parallel_workers_per_gather")[0]
    seen: list[str] = []

    def observed(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SHOW max_parallel_workers_per_gather").fetchone()
        assert row is not None
        seen.append(row[0])

    digests, declare = Snapshot.digests, psycopg.ServerCursor.execute

    def digests_observed(self: Snapshot, query: Any) -> Any:
        observed(self.conn)
        return digests(self, query)

    def declare_observed(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        observed(self.connection)
        return declare(self, query, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "digests", digests_observed)
    monkeypatch.setattr(psycopg.ServerCursor, "execute", declare_observed)
    runner = Runner(databases.production, databases.sandbox, parallel_workers=workers)
    try:
        for method in ("checksum", "stream"):
            report, _ = runner.run(method)
            assert report.statistics.rows_with_differences == 29
    finally:
        runner.close()
    # The passes use what is allowed; rows picked by ctid are read with none.
    allowed = min(workers, int(server_limit))
    assert str(allowed) in seen
    assert all(int(limit) <= allowed for limit in seen)


def test_production_filter_applies_to_the_checksum(databases: DatabasePair) -> None:
    """A production filter (even with a % in it) limits the rows compared, as when streaming."""
    seed(databases, 60)
    databases.production.execute("UPDATE jobs SET stage = 'x%' WHERE job % 3 = 0")
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job % 5 = 0")
    runner = Runner(databases.production, databases.sandbox, production_filter="stage LIKE 'x%%'")
    try:
        # Filtered: jobs divisible by 3; changed in the sandbox: by 5. Both: 1005 … 1050.
        report = assert_same_as_stream(runner, differences=4, missing=(0, 40))
    finally:
        runner.close()
    assert report.statistics.production_rows == 20
    assert report.statistics.not_found_in_production == 40


def test_cli_reports_the_method_and_the_fallback(databases: DatabasePair) -> None:
    """``propagator reconcile --format json`` names the method used and any fallback reason."""
    seed(databases, 30)
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job = 1007")
    result = run_cli(["reconcile", "--format", "json", "--apply"], databases.env())
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["method"], document["fallback_reason"]) == ("checksum", None)
    assert document["statistics"]["updated"] == 1
    result = run_cli(
        ["reconcile", "--format", "json"],
        databases.env(PROPAGATOR_FIELD_MAPPINGS="fab_order,paint_color:upper"),
    )
    document = json.loads(result.stdout)
    assert document["method"] == "stream"
    assert "upper" in document["fallback_reason"]
    result = run_cli(["reconcile", "--method", "stream"], databases.env())
    assert result.returncode == 0, result.stderr
    assert "Matched: 30" in result.stdout


@pytest.mark.skipif(
    os.environ.get("PROPAGATOR_SKIP_CROSS_VERSION") == "1", reason="cross-version check disabled"
)
def test_production_on_another_server_version(sandbox_server: Any) -> None:
    """Production on the PostgreSQL 15 server, sandbox on the embedded one: same answer."""
    try:
        admin = psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=2
        )
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"t_checksum_{os.getpid()}"
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        production = Database(f"postgresql://postgres@127.0.0.1:5432/{name}", name)
        production.execute(
            "CREATE TABLE jobs (id bigserial PRIMARY KEY, job integer NOT NULL, release text "
            "NOT NULL, fab_order numeric(12, 2), UNIQUE (job, release))"
        )
        sandbox = sandbox_server.create_database(name, "propagator_test_template")
        try:
            rows = [(i, "é中"[i % 2], Decimal(i) / 8) for i in range(100)]
            production.insert_jobs(rows)
            sandbox.insert_jobs(rows)
            sandbox.execute("UPDATE jobs SET fab_order = 0.5 WHERE job IN (3, 50)")
            runner = Runner(production, sandbox)
            try:
                assert_same_as_stream(runner, differences=2)
            finally:
                runner.close()
        finally:
            sandbox_server.drop_database(name)
    finally:
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_windowed_stream_compare_matches_the_plain_merge(databases: DatabasePair) -> None:
    """Across many windows, bulk-skipping identical rows gives exactly merge_compare's result."""
    rows = [(i // 2, "AB"[i % 2], Decimal(i % 97) / 4) for i in range(24_000)]
    databases.production.insert_jobs(rows)
    databases.sandbox.insert_jobs(rows)
    databases.sandbox.execute("UPDATE jobs SET fab_order = fab_order + 1 WHERE id % 1999 = 0")
    databases.sandbox.execute("UPDATE jobs SET fab_order = 'NaN' WHERE id % 4001 = 0")
    databases.production.execute("UPDATE jobs SET fab_order = 'NaN' WHERE id % 4001 = 0")
    databases.production.execute("DELETE FROM jobs WHERE id BETWEEN 4990 AND 5020")
    databases.sandbox.execute("DELETE FROM jobs WHERE id BETWEEN 9990 AND 10010 OR id > 23000")
    runner = Runner(databases.production, databases.sandbox)
    try:
        spec, context = runner.context.spec, runner.context
        plain = runner.report()
        plain_found = list(
            merge_compare(
                stream_rows(
                    runner.open("production"), context.production, spec.key_columns, ["fab_order"]
                ),
                stream_rows(
                    runner.open("sandbox"), context.sandbox, spec.key_columns, ["fab_order"]
                ),
                spec,
                plain.statistics,
            )
        )
        for result in plain_found:
            plain.note(result)
        differences = [r for r in plain_found if r.changes]
        stream, found = runner.run("stream")
        assert comparable(stream, found) == comparable(plain, differences)
        assert plain.statistics.rows_with_differences == 10
        assert plain.statistics.not_found_in_sandbox == 1021
        assert_same_as_stream(runner, differences=10, missing=(1021, 31))
    finally:
        runner.close()
