"""The fault proxy itself, against a real server: each fault does what the wire tests rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.faultproxy import FaultProxy
from tests.helpers import DatabasePair, wait_until


@pytest.fixture
def proxy(databases: DatabasePair) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(databases.production.url) as running:
        yield running


def connect(proxy: FaultProxy, databases: DatabasePair, **options: object) -> psycopg.Connection:
    return psycopg.connect(
        proxy.url_for(databases.production.url), autocommit=True, connect_timeout=2, **options
    )


def test_pass_through_and_added_latency(
    proxy: FaultProxy, databases: DatabasePair, measure: Callable[..., float]
) -> None:
    """Queries pass untouched; in latency mode each round trip takes at least twice the delay."""
    with connect(proxy, databases) as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        proxy.set_mode("latency", latency=0.1)
        started = time.monotonic()
        for _ in range(3):
            conn.execute("SELECT 1").fetchone()
        per_query = (time.monotonic() - started) / 3
        measure("round trip with 100 ms added each way", per_query)
        assert per_query >= 0.2
        proxy.pass_through()
        started = time.monotonic()
        conn.execute("SELECT 1").fetchone()
        assert time.monotonic() - started < 0.15


def test_blackhole_holds_bytes_without_closing_then_delivers_them(
    proxy: FaultProxy, databases: DatabasePair
) -> None:
    """A black-holed connection stays open and silent; back in pass mode the answer arrives."""
    with connect(proxy, databases) as conn:
        answers: list[object] = []
        proxy.blackhole()
        worker = threading.Thread(
            target=lambda: answers.append(conn.execute("SELECT 'late'").fetchone())
        )
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()
        assert not answers
        assert not conn.closed
        proxy.pass_through()
        worker.join(10)
        assert answers == [("late",)]


def test_blackhole_can_target_one_application(proxy: FaultProxy, databases: DatabasePair) -> None:
    """Only connections whose startup packet names the application are black-holed."""
    with (
        connect(proxy, databases, application_name="victim listener") as victim,
        connect(proxy, databases, application_name="bystander") as bystander,
    ):
        assert proxy.blackhole(match="victim listener") == 1
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        assert proxy.live(match="victim listener")[0].mode == "blackhole"
        proxy.pass_through()  # new connections and the default only; the victim stays held
        assert proxy.set_mode("pass", match="victim listener") == 1
        assert victim.execute("SELECT 2").fetchone() == (2,)


def test_reset_all_aborts_a_transaction_and_the_server_rolls_it_back(
    proxy: FaultProxy, databases: DatabasePair
) -> None:
    """An RST mid-transaction fails the client at once and the server rolls the work back."""
    databases.production.insert_jobs([(1, "A", 5)])
    conn = psycopg.connect(proxy.url_for(databases.production.url), connect_timeout=2)
    conn.execute("UPDATE jobs SET fab_order = 6 WHERE job = 1")
    assert proxy.reset_all() == 1
    with pytest.raises(psycopg.OperationalError):
        conn.execute("COMMIT")
    conn.close()
    wait_until(
        lambda: (
            databases.production.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
            == 0
        ),
        what="the aborted session gone",
    )
    assert databases.production.scalar("SELECT fab_order FROM jobs") == 5


def test_refuse_then_accept_again(proxy: FaultProxy, databases: DatabasePair) -> None:
    """While refusing, a connect fails fast with 'refused'; afterwards it succeeds again."""
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match=r"(?i)refused"):
        connect(proxy, databases)
    assert time.monotonic() - started < 2
    proxy.accept_again()
    with connect(proxy, databases) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
