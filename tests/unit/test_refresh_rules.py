"""When a sandbox table counts as refreshed, and how a refresh's reconcile is scheduled."""

from __future__ import annotations

from dataclasses import replace

import pytest

from propagator.adapters.identity import MIN_RELOAD_ROWS, TableIdentity, refresh_between
from propagator.daemon.requests import ReconcileRequests

BEFORE = TableIdentity(
    database_oid=1, table_oid=10, filenode=100, live_rows=5000, inserted_rows=5000, deleted_rows=0
)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"database_oid": 2}, "sandbox database recreated"),
        ({"table_oid": 11}, "sandbox table recreated"),
        ({"filenode": 101}, "sandbox table truncated or rewritten"),
        ({"deleted_rows": 5000, "live_rows": 0}, "sandbox table reloaded (5000 rows deleted)"),
    ],
)
def test_a_new_identity_or_a_mass_deletion_is_a_refresh(change: dict[str, int], why: str) -> None:
    assert refresh_between(BEFORE, replace(BEFORE, **change)) == why


@pytest.mark.parametrize(
    "change",
    [
        {},  # updates change nothing read here
        {"deleted_rows": 20, "inserted_rows": 5020},  # ordinary deletes and inserts
        {"inserted_rows": 9000},  # a bulk insert, no refresh seen lately
        {"deleted_rows": 0, "inserted_rows": 0, "live_rows": 0},  # pg_stat_reset
    ],
)
def test_ordinary_work_is_no_refresh(change: dict[str, int]) -> None:
    assert refresh_between(BEFORE, replace(BEFORE, **change)) is None


def test_a_small_table_emptied_is_no_reload() -> None:
    small = replace(BEFORE, live_rows=MIN_RELOAD_ROWS - 1)
    assert refresh_between(small, replace(small, deleted_rows=MIN_RELOAD_ROWS - 1)) is None


def test_rows_loaded_soon_after_a_refresh_are_its_rest() -> None:
    empty = replace(BEFORE, live_rows=0)
    loaded = replace(empty, inserted_rows=BEFORE.inserted_rows + 40)
    assert refresh_between(empty, loaded) is None
    assert refresh_between(empty, loaded, loading=True) == (
        "sandbox table loaded after a refresh (40 rows inserted)"
    )


def test_a_refresh_goes_first_and_stands_for_a_pending_catchup() -> None:
    requests: ReconcileRequests[object] = ReconcileRequests()
    requests.want_reconcile("periodic")
    requests.want_catchup("leadership acquired")
    requests.want_refresh("sandbox database recreated")
    job = requests.start()
    assert job is not None
    assert (job.source, job.reason, job.covers_catchup) == (
        "refresh",
        "sandbox database recreated",
        True,
    )
    assert not requests.pending  # one full reconcile answers all three
    requests.finish(job, succeeded=False, still_leader=True)
    again = requests.start()
    assert again is not None
    assert (again.source, again.covers_catchup) == ("refresh", True)
