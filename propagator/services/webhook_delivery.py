"""Delivering one endpoint's changes from one sandbox's history, one step at a time.

A step reads the cursor (a replay may have moved it), the rows after it, and
either sends the next batch or says how long to wait: for more rows to fill a
batch (``max_wait``), for a hole in the ids to settle, for the next poll, or for
the backoff after a failure. Blocking I/O only; the daemon runs each endpoint's
steps on a thread of its own, so a slow receiver holds up nothing else.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import psycopg

from propagator.adapters.connections import Connection, open_connection, translate_error
from propagator.adapters.webhook_http import DeliveryFailed, WebhookClient
from propagator.core.outbox import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Batch,
    delivery_body,
    delivery_id,
    next_batch,
    retry_delay,
    sign,
)
from propagator.core.redact import redact
from propagator.errors import PropagatorError
from propagator.services.history.schema import setup
from propagator.services.outbox import CursorState, Outbox, SettleProbe
from propagator.settings import Settings
from propagator.settings.webhooks import WebhookSettings
from propagator.version import __version__

__all__ = ["IDLE_POLL_SECONDS", "EndpointDelivery", "Step", "sender_lock_id"]

IDLE_POLL_SECONDS: Final = 1.0
"""How often an idle sender looks for rows written by another process (a CLI reconcile)."""
SETTLE_POLL_SECONDS: Final = 0.05
"""How soon a sender looks again while a hole in the history ids waits to settle."""
_REGROW_AFTER: Final = 10
"""Acknowledged requests after which a batch a 413 halved doubles again."""
SCAN_ROWS: Final = 2_000
"""History rows read per step at most, wanted or not."""

StepKind = Literal["standby", "idle", "settling", "gathering", "sent", "failed"]


@dataclass(frozen=True, slots=True)
class Step:
    """What one step did, and how long to wait before the next one."""

    kind: StepKind
    wait: float = 0.0
    result: str | None = None  # a request's result, as the deliveries metric counts it
    changes: int = 0
    gap: bool = False
    error: str | None = None


def sender_lock_id(endpoint: str, schema: str) -> int:
    """The advisory lock that makes one process the sender of an endpoint for a sandbox."""
    digest = hashlib.sha256(f"propagator:webhook:{endpoint}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class EndpointDelivery:
    """One endpoint's sender for one sandbox history (the first mapping writing it)."""

    def __init__(
        self,
        webhook: WebhookSettings,
        sandbox: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.webhook = webhook
        self.name = webhook.name
        self.sandbox = sandbox
        self.outbox = Outbox(sandbox.history_schema)
        self.lock_id = sender_lock_id(webhook.name, sandbox.history_schema)
        self.client = WebhookClient(
            webhook.url,
            timeout=webhook.timeout.total_seconds(),
            user_agent=f"propagator/{__version__}",
        )
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._conn: Connection | None = None
        self._cursor: int | None = None
        self._settled_through = 0
        self._probe: SettleProbe | None = None
        self._first_seen: tuple[int, float] | None = None
        self._batch_limit = webhook.max_batch
        self._since_shrunk = 0
        self.failures = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.last_delivered_at: datetime | None = None
        self.active = False  # holds the sender lock
        self.cursor = 0
        self.pending = 0
        self._lag, self._lag_at = 0.0, clock()

    # State people see.

    @property
    def lag(self) -> float:
        """How long the oldest change after the cursor has waited, now (0: none).

        Measured at the sender's last look and aged since, so a request a slow receiver
        holds for seconds does not make the endpoint look fresher than it is.
        """
        if not self._lag:
            return 0.0
        return self._lag + max(0.0, self._clock() - self._lag_at)

    @property
    def failing(self) -> bool:
        since, after = self.failing_since, self.webhook.failing_after.total_seconds()
        return since is not None and self._clock() - since >= after

    def describe(self) -> dict[str, Any]:
        return {
            "sandbox_history": self.sandbox.history_schema,
            "active": self.active,
            "cursor": self.cursor,
            "pending": self.pending,
            "lag_seconds": round(self.lag, 3),
            "failing": self.failing,
            "failures_in_a_row": self.failures,
            "last_error": self.last_error,
            "last_delivered_at": None
            if self.last_delivered_at is None
            else self.last_delivered_at.isoformat(),
        }

    # Steps.

    def step(self) -> Step:
        """Send the next batch when one is due; otherwise say what to wait for."""
        conn = self._connection()
        if conn is None:
            return Step("standby", wait=self.sandbox.standby_poll_interval.total_seconds())
        state = self.outbox.cursor(conn, self.name) or self.outbox.start(conn, self.name)
        if state.delivered_id != self._cursor:  # first look, or a replay moved it
            self._cursor, self._first_seen = state.delivered_id, None
        self.cursor, self.pending = state.delivered_id, state.pending
        rows, waited = self.outbox.read_after(
            conn, max(state.delivered_id, state.pruned_through), SCAN_ROWS
        )
        self._lag, self._lag_at = waited or 0.0, self._clock()
        batch = self._plan(rows, state)
        if batch.blocked:
            batch = self._settle(conn, rows, state, batch)
        if not batch.needs_request:
            if batch.cursor_after > state.delivered_id:
                self._advance(conn, state.delivered_id, batch.cursor_after, sent=False)
            if batch.blocked:
                return Step("settling", wait=SETTLE_POLL_SECONDS)
            return Step("idle", wait=IDLE_POLL_SECONDS)
        waiting = self._gathering(batch)
        if waiting > 0:
            return Step("gathering", wait=waiting)
        return self._send(conn, state, batch)

    def _plan(self, rows: list[Any], state: CursorState) -> Batch:
        return next_batch(
            rows,
            state.delivered_id,
            settled_through=self._settled_through,
            wanted=self.webhook.wanted,
            max_batch=self._batch_limit,
            pruned_through=state.pruned_through,
        )

    def _settle(self, conn: Connection, rows: list[Any], state: CursorState, batch: Batch) -> Batch:
        """A hole in the ids: once every writer that might fill it has ended, go past it."""
        if self._probe is not None and self.outbox.settled(conn, self._probe):
            self._settled_through = max(self._settled_through, self._probe.allocated)
            self._probe = None
            batch = self._plan(rows, state)
        if batch.blocked and self._probe is None:
            self._probe = self.outbox.probe(conn)
        return batch

    def _gathering(self, batch: Batch) -> float:
        """Seconds still to wait for a fuller batch (0: send now)."""
        if batch.gap is not None or len(batch.changes) >= self._batch_limit:
            return 0.0
        first, now = batch.changes[0].id, self._clock()
        if self._first_seen is None or self._first_seen[0] != first:
            self._first_seen = (first, now)
        return max(0.0, self.webhook.max_wait.total_seconds() - (now - self._first_seen[1]))

    def _send(self, conn: Connection, state: CursorState, batch: Batch) -> Step:
        body = delivery_body(batch, self.name)
        headers = {DELIVERY_HEADER: delivery_id(batch)}
        if self.webhook.secret:
            headers[SIGNATURE_HEADER] = sign(self.webhook.secret, int(time.time()), body)
        try:
            answer = self.client.post(body, headers)
        except DeliveryFailed as failure:
            return self._failed(conn, failure.kind, str(failure), None)
        if not answer.ok:
            if answer.status == 413 and len(batch.changes) > 1:
                self._batch_limit = max(1, len(batch.changes) // 2)  # too large: halve it
                self._since_shrunk = 0
            return self._failed(conn, "rejected", answer.describe(), answer.retry_after)
        self._advance(conn, state.delivered_id, batch.cursor_after, sent=True)
        self.failures, self.failing_since, self._first_seen = 0, None, None
        self._grow_batch()
        self.last_delivered_at = datetime.now(UTC)
        return Step("sent", result="delivered", changes=len(batch.changes), gap=bool(batch.gap))

    def _grow_batch(self) -> None:
        """After a 413 halved it, the batch doubles back every ``_REGROW_AFTER`` successes."""
        if self._batch_limit < self.webhook.max_batch:
            self._since_shrunk += 1
            if self._since_shrunk >= _REGROW_AFTER:
                self._batch_limit = min(self.webhook.max_batch, self._batch_limit * 2)
                self._since_shrunk = 0

    def _failed(self, conn: Connection, result: str, error: str, retry_after: float | None) -> Step:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = redact(error)[:300]
        self.outbox.failed(conn, self.name, self.last_error)
        return Step("failed", wait=self._backoff(retry_after), result=result, error=self.last_error)

    def _backoff(self, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` failures in a row (a Retry-After, if any, capped)."""
        maximum = self.webhook.retry_max.total_seconds()
        if retry_after is not None:
            return min(retry_after, maximum)
        initial = self.webhook.retry_initial.total_seconds()
        return retry_delay(self.failures, initial=initial, maximum=maximum, rng=self._rng)

    def _advance(self, conn: Connection, old: int, new: int, *, sent: bool) -> None:
        moved = self.outbox.advance(conn, self.name, old, new, sent=sent)
        self._cursor = new if moved else None  # not moved: a replay did; read it again
        if moved:
            self.cursor = new

    # The connection, and the lock that elects one sender per endpoint and sandbox.

    def _connection(self) -> Connection | None:
        if self._conn is None or self._conn.closed:
            self._conn = open_connection(
                self.sandbox, "sandbox", f"webhook {self.name}", autocommit=True
            )
            self.active = False
            try:  # the cursor table may be newer than the schema (an upgrade): apply it
                setup(self._conn, self.sandbox.history_schema)
            except PropagatorError:
                self.drop()
                raise
        if not self.active:
            try:
                row = self._conn.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self.lock_id,)
                ).fetchone()
            except psycopg.Error as error:
                self.drop()
                raise translate_error(error, "sandbox", "taking the webhook sender lock") from None
            self.active = bool(row and row[0])
            self._cursor = None
        return self._conn if self.active else None

    def database_failed(self, error: PropagatorError) -> float:
        """Note a database failure; the seconds to wait before trying again."""
        self.drop()
        self.last_error = str(error)[:300]
        self.failures += 1
        return self._backoff()

    def drop(self) -> None:
        """Close the sandbox connection (and with it the sender lock) and the HTTP one."""
        self.active = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.client.close()
