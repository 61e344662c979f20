"""``propagator webhooks status|replay``: where each endpoint stands, and sending again.

Both read the cursors in the sandbox (``<history_schema>.webhook_cursors``), so
they work whether or not a daemon runs; a running daemon sees a replay at its
endpoint's next step. Every sandbox is read before anything is printed.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from propagator.errors import ConfigurationError, ExitCode
from propagator.services.history import History, HistorySandbox, history_sandboxes, parse_time
from propagator.services.outbox import EndpointStatus, Outbox, ReplayResult
from propagator.services.sync import SyncSession
from propagator.settings import Configuration, load_configuration
from propagator.settings.webhooks import WebhookSettings

__all__ = ["run"]

NOT_FAILING = 0
FAILING = 1


def run(args: argparse.Namespace) -> int:
    configuration = load_configuration(args.config, selection=args.mappings)
    if not configuration.webhooks:
        raise ConfigurationError(
            "no webhooks are configured (add [[webhooks]] tables to the --config file)"
        )
    if args.action == "replay":
        return _replay(configuration, args.name, args.since)
    return _status(configuration, args.format, check=args.check)


def _places(configuration: Configuration, webhook: WebhookSettings) -> list[HistorySandbox]:
    """The sandbox histories holding the endpoint's changes."""
    covered = [m for m in configuration.mappings if webhook.covers(m.mapping_name)]
    return list(history_sandboxes(covered))


def _status(configuration: Configuration, output: str, *, check: bool) -> int:
    rows: list[dict[str, Any]] = []
    for place in history_sandboxes(configuration.mappings):
        readers = [w for w in configuration.webhooks if any(map(w.covers, place.names))]
        found = {s.endpoint: s for s in _read_status(place, [w.name for w in readers])}
        rows += [_row(webhook, place, found.get(webhook.name)) for webhook in readers]
    if output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
    failing = any(row["failing"] for row in rows)
    return FAILING if check and failing else NOT_FAILING


def _read_status(place: HistorySandbox, names: list[str]) -> list[EndpointStatus]:
    if not names:
        return []
    with SyncSession(place.settings, application_name="propagator webhooks") as session:
        conn = session.open_sandbox()
        History(place.settings).check(conn)
        return Outbox(place.settings.history_schema).status(conn, names)


def _row(
    webhook: WebhookSettings, place: HistorySandbox, status: EndpointStatus | None
) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "endpoint": webhook.name,
        "origin": webhook.origin,
        "sandbox": place.sandbox,
        "history_schema": place.settings.history_schema,
        "started": status is not None,
    }
    if status is None:
        return shown | {"failing": False}
    since = status.failing_since
    failing = since is not None and datetime.now(UTC) - since >= webhook.failing_after
    return shown | status.as_dict() | {"failing": failing}


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no webhook reads the selected mappings"
    header = ("ENDPOINT", "SANDBOX", "CURSOR", "PENDING", "LAG", "DELIVERED", "STATE", "LAST ERROR")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        if not row["started"]:
            lines.append((row["endpoint"], row["sandbox"], "-", "-", "-", "-", "not started", ""))
            continue
        lag = row["lag_seconds"]
        state = "failing" if row["failing"] else ("retrying" if row["failing_since"] else "ok")
        lines.append(
            (
                row["endpoint"],
                row["sandbox"],
                str(row["cursor"]),
                str(row["pending"]),
                "-" if lag is None else f"{lag:.1f}s",
                row["delivered_at"] or "never",
                state,
                (row["last_error"] or "")[:80] if row["failing_since"] else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _replay(configuration: Configuration, name: str, since_text: str) -> int:
    by_name = {w.name: w for w in configuration.webhooks}
    if name not in by_name:
        raise ConfigurationError(
            f"no webhook is called {name[:40]!r}; the webhooks are: {', '.join(by_name)}"
        )
    since = parse_time(since_text, what="--since")
    places = _places(configuration, by_name[name])
    results = []
    for place in places:
        with SyncSession(place.settings, application_name="propagator webhooks") as session:
            conn = session.open_sandbox()
            History(place.settings).check(conn)
            with conn.transaction():  # the session's connection is not in autocommit
                outbox = Outbox(place.settings.history_schema)
                results.append((place, outbox.replay(conn, name, since)))
    for place, result in results:
        print(_describe_replay(place, result, since))
    return ExitCode.OK


def _describe_replay(place: HistorySandbox, result: ReplayResult, since: datetime) -> str:
    text = (
        f"webhook {result.endpoint}: sandbox {place.sandbox}: cursor moved to id {result.cursor}; "
        f"changes after it are sent again"
    )
    if result.oldest_at is not None and result.oldest_at > since:
        text += (
            f" (the oldest history kept is id {result.oldest_id}, applied "
            f"{result.oldest_at.isoformat(timespec='seconds')}: nothing older can be sent)"
        )
    return text
