"""Webhooks from the sync history to a real HTTP receiver, with the daemon in-process."""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import time
from datetime import timedelta
from pathlib import Path

from propagator.services.history import History
from propagator.services.outbox import Outbox
from propagator.services.webhook_delivery import EndpointDelivery
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, cli_env, run_cli, wait_until
from tests.integration.support import daemon_settings, install_triggers, seed
from tests.integration.webhook_support import Received, receiving, webhook

SECRET = "a-secret-of-at-least-16-chars"


def _history_ids(databases: DatabasePair) -> list[int]:
    rows = databases.sandbox.fetchall("SELECT id FROM propagator.sync_history ORDER BY id")
    return [row[0] for row in rows]


def test_ten_thousand_changes_arrive_each_once_in_history_order(databases: DatabasePair) -> None:
    """Changes committed by several lanes at once reach the receiver once each, ids rising,
    signed as documented."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 10_000, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with receiving() as receiver:
        endpoint = webhook(settings, receiver.url, secret=SECRET, max_batch=1000)
        with DaemonRunner(settings, webhooks=[endpoint]) as running:
            running.wait_caught_up()
            for part in range(10):  # ten statements, so batches of several lanes interleave
                databases.production.execute(
                    "UPDATE jobs SET fab_order = fab_order + 100000 WHERE job %% 10 = %s", (part,)
                )
            wait_until(
                lambda: len(receiver.delivered_ids()) >= 10_000, timeout=90, what="10,000 ids"
            )
            wait_until(
                lambda: running.metric("propagator_webhook_pending_changes", endpoint="hook") == 0,
                what="pending 0",
            )
            delivered = running.metric(
                "propagator_webhook_changes_delivered_total", endpoint="hook"
            )
        ids = receiver.delivered_ids()
        assert ids == _history_ids(databases)
        assert len(ids) == 10_000
        assert len(set(ids)) == 10_000
        assert delivered == 10_000
        for request in receiver.accepted():
            stamp, signature = request.headers["propagator-signature"].split(",")
            mac = hmac.new(
                SECRET.encode(), stamp[2:].encode() + b"." + request.body, hashlib.sha256
            )
            assert signature == f"v1={mac.hexdigest()}"
            assert request.headers["propagator-delivery"] == f"{request.ids[0]}-{request.ids[-1]}"
            assert len(request.ids) <= 1000


def test_a_receiver_answering_500_is_retried_with_the_same_changes(
    databases: DatabasePair,
) -> None:
    """Two 500s, then 200: the same delivery is retried until acknowledged, then the next."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 20, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    answers = iter([500, 500])

    def answer(_request: Received) -> int:
        return next(answers, 200)

    with (
        receiving(answer=answer) as receiver,
        DaemonRunner(settings, webhooks=[webhook(settings, receiver.url)]) as running,
    ):
        running.wait_caught_up()
        databases.production.execute("UPDATE jobs SET fab_order = 5000 WHERE job <= 3")
        wait_until(lambda: len(receiver.accepted()) == 1, what="the accepted delivery")
        deliveries = [r.headers["propagator-delivery"] for r in receiver.requests]
        assert len(deliveries) == 3
        assert len(set(deliveries)) == 1
        assert [r.status for r in receiver.requests] == [500, 500, 200]
        assert (
            running.metric(
                "propagator_webhook_deliveries_total", endpoint="hook", result="rejected"
            )
            == 2
        )
        wait_until(  # the receiver records a request before the daemon reads its answer
            lambda: (
                running.metric(
                    "propagator_webhook_deliveries_total", endpoint="hook", result="delivered"
                )
                == 1
            ),
            what="the delivery counted",
        )
        status = running.daemon.status()["webhooks"][0]
        assert status["failing"] is False
        assert "500" in status["senders"][0]["last_error"]
        databases.production.execute("UPDATE jobs SET fab_order = 6000 WHERE job = 4")
        wait_until(lambda: len(receiver.accepted()) == 2, what="the next delivery")
        assert receiver.delivered_ids() == _history_ids(databases)[-4:]


def test_a_receiver_taking_5_seconds_per_request_does_not_slow_the_sync(
    databases: DatabasePair,
) -> None:
    """While every webhook request takes 5 s, each production change still reaches the sandbox
    as fast as with no webhook at all (same run, same changes)."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 100, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")

    def lags(value: int) -> list[float]:
        found = []
        for job in range(1, 21):
            databases.production.execute(
                "UPDATE jobs SET fab_order = %s WHERE job = %s", (value + job, job)
            )
            started = time.monotonic()
            wait_until(
                lambda j=job: (
                    databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = %s", (j,))
                    == value + j
                ),
                interval=0.005,
                what="the change in the sandbox",
            )
            found.append(time.monotonic() - started)
        return found

    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        without = lags(1000)
    with (
        receiving(delay=5.0) as receiver,
        DaemonRunner(
            settings, webhooks=[webhook(settings, receiver.url, max_wait="0s")]
        ) as running,
    ):
        running.wait_caught_up()
        with_slow = lags(2000)
        assert running.daemon.status()["webhooks"][0]["pending"] > 0  # still stuck behind it
    assert statistics.median(with_slow) < statistics.median(without) * 2 + 0.05
    assert max(with_slow) < 2.0


def test_filters_pass_over_unwanted_changes_and_status_shows_the_cursor(
    databases: DatabasePair, tmp_path: Path
) -> None:
    """An endpoint wanting only reconcile changes gets none of the events; its cursor still
    moves past them, and `webhooks status` and `replay` work from the command line."""
    settings = daemon_settings(databases)
    install_triggers(databases, settings)
    seed(databases, 10, sandbox_value=None)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with receiving() as receiver:
        every = webhook(settings, receiver.url)
        only = webhook(settings, receiver.url, name="reconciles", sources=["reconcile"])
        with DaemonRunner(settings, webhooks=[every, only]) as running:
            running.wait_caught_up()
            databases.production.execute("UPDATE jobs SET fab_order = 77 WHERE job <= 5")
            wait_until(lambda: len(receiver.delivered_ids()) == 5, what="five changes")
            wait_until(
                lambda: (
                    {
                        s["endpoint"]: s["cursor"]
                        for s in _cli_status(databases, receiver.url, tmp_path)
                    }
                    == {
                        "hook": max(_history_ids(databases)),
                        "reconciles": max(_history_ids(databases)),
                    }
                ),
                what="both cursors past the events",
            )
        assert all(r.payload["endpoint"] == "hook" for r in receiver.accepted())
        config = _config(databases, receiver.url, tmp_path)
        replay = run_cli(
            ["webhooks", "replay", "hook", "--since", "1h", "--config", config],
            cli_env(**_urls(databases)),
        )
        assert replay.returncode == 0, replay.stderr
        assert "cursor moved to id" in replay.stdout
        with DaemonRunner(settings, webhooks=[every, only]):
            wait_until(lambda: len(receiver.delivered_ids()) >= 10, what="the replayed changes")
        assert receiver.delivered_ids()[5:] == receiver.delivered_ids()[:5]


def _urls(databases: DatabasePair) -> dict[str, str]:
    return {
        "PRODUCTION_DATABASE_URL": databases.production.url,
        "SANDBOX_DATABASE_URL": databases.sandbox.url,
    }


def _config(databases: DatabasePair, url: str, tmp_path: Path) -> str:
    path = tmp_path / "propagator.toml"
    path.write_text(
        f'[[webhooks]]\nname = "hook"\nurl = "{url}"\n\n'
        f'[[webhooks]]\nname = "reconciles"\nurl = "{url}"\nsources = ["reconcile"]\n'
    )
    return str(path)


def _cli_status(databases: DatabasePair, url: str, tmp_path: Path) -> list[dict[str, object]]:
    result = run_cli(
        ["webhooks", "status", "--format", "json", "--config", _config(databases, url, tmp_path)],
        cli_env(**_urls(databases)),
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_retention_keeps_what_an_endpoint_has_not_received_then_says_what_it_pruned(
    databases: DatabasePair,
) -> None:
    """Undelivered history survives retention; past webhook_hold_max it is pruned and the
    endpoint's next request carries a gap notice naming the ids it will never get."""
    settings = daemon_settings(databases, history_retention="0s")
    install_triggers(databases, settings)
    seed(databases, 10, sandbox_value=None)
    history = History(settings)
    outbox = Outbox(settings.history_schema)
    with databases.sandbox.connect() as conn:
        history.setup(conn)
        outbox.start(conn, "hook")
    with DaemonRunner(settings) as running:  # the catch-up writes 10 history rows
        running.wait_caught_up()
    ids = _history_ids(databases)
    assert len(ids) == 10
    with databases.sandbox.connect() as conn:
        assert history.prune(conn, force=True).deleted == 0  # type: ignore[union-attr]
        history.hold_max = timedelta(microseconds=1)
        result = history.prune(conn, force=True)
    assert result is not None
    assert result.deleted == 10
    assert result.endpoints_told == 1
    with receiving() as receiver:
        delivery = EndpointDelivery(webhook(settings, receiver.url), settings)
        try:
            step = delivery.step()
        finally:
            delivery.drop()
    assert step.kind == "sent"
    assert step.gap
    (request,) = receiver.accepted()
    assert request.payload["changes"] == []
    assert request.payload["gap"]["after_id"] == ids[0] - 1
    assert request.payload["gap"]["through_id"] == ids[-1]
    assert request.headers["propagator-delivery"] == f"{ids[0]}-{ids[-1]}"


def test_bad_webhook_configuration_stops_the_command_with_one_line(tmp_path: Path) -> None:
    """Another scheme, a metadata address, a name used twice: `run` stops before connecting,
    exit 2, one line naming the webhook and the key."""
    cases = {
        'name = "ci"\nurl = "ftp://files.example.com/hook"': (
            "webhook 'ci': invalid url: ftp://files.example.com must be an https:// URL"
        ),
        'name = "ci"\nurl = "http://169.254.169.254/latest/meta-data"': (
            "webhook 'ci': invalid url: http://169.254.169.254 is refused: "
            "169.254.169.254 is a cloud metadata address"
        ),
        'name = "ci"\nurl = "https://a.example.com/x"\n\n[[webhooks]]\n'
        'name = "ci"\nurl = "https://b.example.com/y"': "webhook 'ci': the name is used twice",
    }
    env = cli_env(
        PRODUCTION_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        SANDBOX_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    for table, message in cases.items():
        config = tmp_path / "bad.toml"
        config.write_text(f"[[webhooks]]\n{table}\n")
        result = run_cli(["run", "--config", str(config)], env, timeout=30)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"propagator: error: {message}")
        assert result.stdout == ""
