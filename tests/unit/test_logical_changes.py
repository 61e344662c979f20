"""A slot's decoded messages become the same notifications the triggers send."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from propagator.core.logical_changes import ChangeCollector, WatchedRelation, key_part
from propagator.core.payload import Change, Resync
from propagator.core.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Update,
)

COMMITTED = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)
JOBS = Relation(
    16384,
    "public",
    "jobs",
    "d",
    (
        RelationColumn(1, "job", 23, -1),
        RelationColumn(1, "release", 25, -1),
        RelationColumn(0, "fab_order", 1700, -1),
    ),
)
OTHER = Relation(16390, "public", "audit", "d", (RelationColumn(1, "id", 20, -1),))


def collector(max_keys: int = 1000) -> ChangeCollector:
    watched = [WatchedRelation("public", "jobs", "propagator_jobs", ("job", "release"))]
    return ChangeCollector(watched, max_keys=max_keys)


@dataclass
class Read:
    end_lsn: int
    announced: bool
    changes: tuple[Change | Resync, ...]


def transaction(
    c: ChangeCollector, *messages: object, end_lsn: int = 500, when: datetime = COMMITTED
) -> Read:
    """Feed one transaction and take what it announced."""
    assert c.feed(Begin(400, when, 7)) is None
    for message in messages:
        assert c.feed(message) is None  # type: ignore[arg-type]
    committed = c.feed(Commit(0, 450, end_lsn, when))
    assert committed is not None
    assert committed.xid == 7
    return Read(committed.end_lsn, committed.announced, tuple(c.take()))


def test_inserts_and_updates_of_a_transaction_become_one_change_with_its_commit_time() -> None:
    c = collector()
    c.feed(JOBS)
    result = transaction(
        c,
        Insert(16384, ("1", "A", "5.00")),
        Update(16384, None, False, ("2", "B", "6.00")),
        Update(16384, None, False, ("1", "A", "7.00")),  # the same key again: once
    )
    assert result.end_lsn == 500
    assert result.changes == (
        Change(((1, "A"), (2, "B")), COMMITTED.timestamp(), "propagator_jobs"),
    )


def test_a_key_change_announces_the_old_key_and_the_new_one_and_a_delete_its_old_key() -> None:
    c = collector()
    c.feed(JOBS)
    result = transaction(
        c,
        Update(16384, ("1", "A", None), True, ("9", "A", "5.00")),
        Delete(16384, ("3", "C", None), True),
    )
    assert set(result.changes[0].keys) == {(9, "A"), (1, "A"), (3, "C")}


def test_rows_with_a_null_or_unsent_key_part_and_other_tables_are_not_announced() -> None:
    c = collector()
    c.feed(JOBS)
    c.feed(OTHER)
    result = transaction(
        c,
        Insert(16384, ("1", None, "5.00")),
        Update(16384, None, False, ("2", UNCHANGED, "6.00")),
        Insert(16390, ("77",)),
    )
    assert result.changes == ()


def test_a_transaction_over_the_key_limit_is_announced_as_a_resync() -> None:
    c = collector(max_keys=2)
    c.feed(JOBS)
    result = transaction(c, *(Insert(16384, (str(n), "A", "1")) for n in range(5)))
    assert result.changes == (Resync(COMMITTED.timestamp(), "propagator_jobs"),)


def test_a_publication_without_a_key_column_makes_every_change_a_resync() -> None:
    c = collector()
    c.feed(Relation(16384, "public", "jobs", "d", (RelationColumn(1, "job", 23, -1),)))
    result = transaction(c, Insert(16384, ("1",)))
    assert result.changes == (Resync(COMMITTED.timestamp(), "propagator_jobs"),)


def test_a_table_named_without_schema_is_matched_in_any_schema() -> None:
    watched = [WatchedRelation(None, "jobs", "propagator_jobs", ("job", "release"))]
    c = ChangeCollector(watched, max_keys=10)
    c.feed(Relation(1, "sales", "jobs", "d", JOBS.columns))
    result = transaction(c, Insert(1, ("4", "D", "1")))
    assert result.changes[0].keys == ((4, "D"),)


def test_key_parts_are_typed_as_the_triggers_json_types_them() -> None:
    assert key_part("42", 23) == 42
    assert key_part("-9000000000", 20) == -9000000000
    assert key_part("42.000", 1700) == 42
    assert key_part("4.5", 1700) == Decimal("4.5")
    assert Decimal(str(key_part("NaN", 1700))).is_nan()
    assert key_part("t", 16) is True
    assert key_part("f", 16) is False
    assert key_part("2026-12-06", 1082) == "2026-12-06"
    assert key_part(b"A", 25) == "A"


def test_transactions_read_together_are_handed_over_as_one_change_with_the_earliest_time() -> None:
    c = collector()
    c.feed(JOBS)
    later = COMMITTED + timedelta(milliseconds=40)
    for when, job in ((COMMITTED, "1"), (later, "2"), (later, "1")):
        c.feed(Begin(400, when, 7))
        c.feed(Update(16384, None, False, (job, "A", "5.00")))
        committed = c.feed(Commit(0, 450, 500, when))
        assert committed is not None
        assert committed.announced
    assert c.take() == [Change(((1, "A"), (2, "A")), COMMITTED.timestamp(), "propagator_jobs")]
    assert c.take() == []
