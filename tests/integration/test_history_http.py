"""History and on-demand reconcile over the daemon's HTTP endpoint, against real servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from propagator.core.plan import FieldChange, JobMappingResult, MatchStatus
from propagator.observability.pages import add_web_routes
from propagator.services import history as history_service
from propagator.services.history import History, HistoryReader
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.http_support import Running, request, serving
from tests.integration.support import daemon_settings, install_triggers, seed

TOKEN = "reconcile-token-7f3a9c"


def history_json(port: int, **params: str) -> tuple[int, Any]:
    answer = request(port, "GET", "/history?" + urlencode(params))
    return answer.status, answer.json()


@pytest.fixture
def history_server(databases: DatabasePair) -> Iterator[Running]:
    """An HttpServer whose /history reads five recorded changes from the real sandbox."""
    with databases.sandbox.connect() as conn:
        history_service.setup(conn, "propagator")
        for job, source in (
            (1, "event"),
            (2, "reconcile"),
            (1, "manual"),
            (3, "event"),
            (1, "catchup"),
        ):
            result = JobMappingResult(
                (job, "A"),
                MatchStatus.MATCHED,
                (FieldChange("fab_order", Decimal(job), Decimal("9.50")),),
            )
            with conn.transaction():
                history_service.record(conn, "propagator", [result], source)
    settings = daemon_settings(databases)
    reader = HistoryReader(History(settings), settings)
    with serving() as running:
        add_web_routes(
            running.server,
            status=running.probe.status_payload,
            history=reader,
            reconcile=None,
            api_token=None,
        )
        yield running
    reader.close()


def test_get_history_filters_and_pages(history_server: Running) -> None:
    """GET /history takes the CLI's filters as parameters and pages newest-first by `before`."""
    port = history_server.port
    status, body = history_json(port, key="1-A")
    assert status == 200
    assert [e["source"] for e in body["entries"]] == ["catchup", "manual", "event"]
    assert body["entries"][0]["new_value"] == 9.5
    assert history_json(port, key='[1, "A"]', source="manual")[1]["count"] == 1
    assert history_json(port, field="paint_color")[1]["entries"] == []
    assert history_json(port, since="1h")[1]["count"] == 5
    assert history_json(port, until="1h")[1]["count"] == 0
    status, first = history_json(port, limit="2")
    assert [e["key_label"] for e in first["entries"]] == ["1-A", "3-A"]
    _, second = history_json(port, limit="2", before=str(first["next_before"]))
    _, third = history_json(port, limit="2", before=str(second["next_before"]))
    assert [e["key_label"] for e in second["entries"] + third["entries"]] == ["1-A", "2-A", "1-A"]
    assert third["next_before"] is None


def test_get_history_refuses_bad_filters_with_400(history_server: Running) -> None:
    """Bad filter values answer 400 with the same one-line reason the CLI gives."""
    for params, fragment in (
        ({"since": "soon"}, "neither an ISO time"),
        ({"limit": "-3"}, "limit must be a whole number"),
        ({"source": "cron"}, "source must be one of"),
        ({"key": "[1,"}, "not a valid JSON array"),
    ):
        status, body = history_json(history_server.port, **params)
        assert status == 400, params
        assert fragment in body["error"]


def test_history_routes_without_history(databases: DatabasePair) -> None:
    """With history disabled /history answers 404 and the page says so; reconcile is refused."""
    with serving() as running:
        add_web_routes(
            running.server,
            status=running.probe.status_payload,
            history=None,
            reconcile=None,
            api_token=None,
        )
        assert request(running.port, "GET", "/history").status == 404
        page = request(running.port, "GET", "/")
        assert page.status == 200
        assert b"history is disabled" in page.body
        assert b"Reconcile now" not in page.body
        refused = request(running.port, "POST", "/reconcile", headers={"Authorization": "Bearer x"})
        assert refused.status == 403


@pytest.fixture
def guarded_daemon(databases: DatabasePair) -> Iterator[DaemonRunner]:
    """A caught-up daemon with an API token, triggers installed and 20 rows in sync."""
    settings = daemon_settings(databases, api_token=TOKEN)
    install_triggers(databases, settings)
    seed(databases, 20, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        yield running


def test_daemon_records_events_and_reconciles_on_authorized_request(
    databases: DatabasePair, guarded_daemon: DaemonRunner, capfd: pytest.CaptureFixture[str]
) -> None:
    """Events land in history with their change time; POST /reconcile needs the exact token."""
    daemon = guarded_daemon.daemon
    assert daemon.http is not None
    port = daemon.http.port
    assert databases.sandbox.scalar("SELECT max(version) FROM propagator.schema_version") == 4

    databases.production.execute("UPDATE jobs SET fab_order = 333 WHERE job = 3")
    entry = wait_until(
        lambda: history_json(port, key="3-A")[1]["entries"],
        what="the event's history entry",
    )[0]
    assert (entry["field"], entry["old_value"], entry["new_value"]) == ("fab_order", 3, 333)
    assert entry["source"] == "event"
    assert entry["changed_at"] is not None
    assert 0 <= entry["lag_seconds"] < 30

    # Drift the sandbox behind the daemon's back (no trigger there): only a reconcile sees it.
    databases.sandbox.execute("UPDATE jobs SET fab_order = 0 WHERE job IN (5, 6)")
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
        refused = request(port, "POST", "/reconcile", headers=headers)
        assert refused.status == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
    assert databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE fab_order = 0") == 2

    answer = request(port, "POST", "/reconcile", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 200, answer.body
    summary = answer.json()
    assert summary["source"] == "manual"
    assert (summary["differences"], summary["updated"], summary["failed"]) == (2, 2, 0)
    assert databases.sandbox.scalar("SELECT count(*) FROM jobs WHERE fab_order = 0") == 0
    _, manual = history_json(port, source="manual")
    assert sorted(e["key_label"] for e in manual["entries"]) == ["5-A", "6-A"]
    assert all(e["changed_at"] is None for e in manual["entries"])
    assert (
        guarded_daemon.metric("propagator_reconcile_runs_total", source="manual", result="success")
        == 1
    )

    status = json.loads(request(port, "GET", "/status").body)
    assert status["history"]["enabled"] is True
    assert status["history"]["rows_recorded"] >= 3
    page = request(port, "GET", "/")
    assert page.status == 200
    assert b"Reconcile now" in page.body
    guarded_daemon.stop()
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert TOKEN.encode() not in page.body


def test_reconcile_is_refused_when_no_token_is_configured(databases: DatabasePair) -> None:
    """Without api_token, POST /reconcile answers 403 whatever the request carries."""
    settings = daemon_settings(databases)
    seed(databases, 3)
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        assert running.daemon.http is not None
        port = running.daemon.http.port
        for headers in ({}, {"Authorization": "Bearer anything"}):
            assert request(port, "POST", "/reconcile", headers=headers).status == 403
        assert b"Reconcile now" not in request(port, "GET", "/").body
        # history is on by default: the daemon set its schema up on start
        wait_until(
            lambda: databases.sandbox.scalar(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'propagator'"
            ),
            what="the history schema",
        )


@pytest.mark.slow
def test_a_standby_refuses_to_reconcile_and_the_leader_prunes_history(
    databases: DatabasePair,
) -> None:
    """POST /reconcile on a standby answers 409; the leader's pruner deletes expired history."""
    settings = daemon_settings(databases, api_token=TOKEN, history_retention="1d")
    seed(databases, 3)
    with databases.sandbox.connect() as conn:
        history_service.setup(conn, "propagator")
        with conn.transaction():
            old = [
                JobMappingResult((job, "A"), MatchStatus.MATCHED, (FieldChange("fab_order", 0, 1),))
                for job in range(1, 4)
            ]
            history_service.record(conn, "propagator", old, "reconcile")
        conn.execute("UPDATE propagator.sync_history SET applied_at = now() - interval '2 days'")
    with DaemonRunner(settings, instance_id="leader") as leader:
        leader.wait_caught_up()
        with DaemonRunner(settings, instance_id="standby") as standby:
            wait_until(lambda: standby.daemon.role == "standby", what="the standby role")
            assert standby.daemon.http is not None
            refused = request(
                standby.daemon.http.port,
                "POST",
                "/reconcile",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert refused.status == 409
            assert "standby" in refused.json()["error"]
        expired = "SELECT count(*) FROM propagator.sync_history WHERE source = 'reconcile'"
        wait_until(
            lambda: databases.sandbox.scalar(expired) == 0,
            timeout=30,
            what="the leader's retention prune",
        )
        assert leader.daemon.history.last_prune is not None
        assert leader.daemon.history.last_prune.deleted == 3
    # The catch-up's own changes are recent, and stay.
    assert databases.sandbox.fetchall(
        "SELECT source, count(*) FROM propagator.sync_history GROUP BY source"
    ) == [("catchup", 3)]
