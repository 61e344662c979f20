"""The sync history read as an outbox: cursors, rows after them, and proof of order.

Every statement is one short autocommit statement on the sandbox; the cursor of
an endpoint only moves forward after its receiver answered 2xx, and only from
where this sender last saw it (``propagator webhooks replay`` may move it back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from propagator.adapters.connections import Connection
from propagator.adapters.postgres import translate_error, with_parameters
from propagator.core.outbox import OutboxRow
from propagator.errors import ConfigurationError
from propagator.services.history.schema import schema_statement

__all__ = ["CursorState", "EndpointStatus", "Outbox", "ReplayResult", "SettleProbe"]


@dataclass(frozen=True, slots=True)
class CursorState:
    """Where an endpoint stands in one sandbox's history."""

    delivered_id: int
    pruned_through: int
    last_id: int  # the newest history id

    @property
    def pending(self) -> int:
        """History rows after the cursor, before filters."""
        return max(0, self.last_id - max(self.delivered_id, self.pruned_through))


@dataclass(frozen=True, slots=True)
class SettleProbe:
    """Every id up to ``allocated`` is settled once all of ``writers`` have ended."""

    allocated: int
    writers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    endpoint: str
    cursor: int
    oldest_id: int | None
    oldest_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One row of ``propagator webhooks status``."""

    endpoint: str
    delivered_id: int
    pruned_through: int
    delivered_at: datetime | None
    deliveries: int
    failing_since: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    pending: int
    lag_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "endpoint": self.endpoint,
            "cursor": self.delivered_id,
            "pruned_through": self.pruned_through,
            "delivered_at": iso(self.delivered_at),
            "deliveries": self.deliveries,
            "failing_since": iso(self.failing_since),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "pending": self.pending,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
        }


class Outbox:
    """One sandbox's history as the outbox of the webhook endpoints."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def _run(self, conn: Connection, name: str, parameters: dict[str, Any], what: str) -> Any:
        template = schema_statement(f"webhooks/{name}.sql", self.schema)
        statement = with_parameters(template, [self.schema])
        try:
            return conn.execute(statement, parameters)
        except psycopg.Error as error:
            raise translate_error(error, "sandbox", what) from None

    def start(self, conn: Connection, endpoint: str) -> CursorState:
        """The endpoint's cursor, created at the newest history row when it has none."""
        self._run(conn, "start_cursor", {"endpoint": endpoint}, "creating a webhook cursor")
        state = self.cursor(conn, endpoint)
        assert state is not None
        return state

    def cursor(self, conn: Connection, endpoint: str) -> CursorState | None:
        row = self._run(
            conn, "cursor", {"endpoint": endpoint}, "reading a webhook cursor"
        ).fetchone()
        return None if row is None else CursorState(int(row[0]), int(row[1]), int(row[2]))

    def read_after(
        self, conn: Connection, after: int, limit: int
    ) -> tuple[list[OutboxRow], float | None]:
        """Up to ``limit`` rows after ``after``, oldest first; and how long the first waited."""
        rows = self._run(
            conn, "read", {"after": after, "limit": limit}, "reading the sync history"
        ).fetchall()
        waited = float(rows[0][10]) if rows else None
        return [_row(r) for r in rows], waited

    def probe(self, conn: Connection) -> SettleProbe:
        """The ids drawn so far, and the history writers that might still commit some."""
        parameters = {"schema": self.schema}
        allocated = self._run(conn, "allocated", parameters, "reading the history sequence")
        value = allocated.fetchone()
        writers = self._run(conn, "writers", parameters, "listing history writers").fetchone()
        return SettleProbe(int(value[0]) if value else 0, tuple(writers[0]) if writers else ())

    def settled(self, conn: Connection, probe: SettleProbe) -> bool:
        """Whether every id of ``probe`` is now committed or never will be."""
        if not probe.writers:
            return True
        row = self._run(
            conn,
            "writers_done",
            {"schema": self.schema, "writers": list(probe.writers)},
            "checking history writers",
        ).fetchone()
        return bool(row and row[0])

    def advance(self, conn: Connection, endpoint: str, old: int, new: int, *, sent: bool) -> bool:
        """Move the cursor from ``old`` to ``new``; False when someone moved it meanwhile."""
        moved = self._run(
            conn,
            "advance",
            {"endpoint": endpoint, "from": old, "to": new, "sent": sent},
            "moving a webhook cursor",
        )
        return bool(moved.rowcount == 1)

    def failed(self, conn: Connection, endpoint: str, error: str) -> None:
        self._run(conn, "failed", {"endpoint": endpoint, "error": error[:500]}, "noting a failure")

    def replay(self, conn: Connection, endpoint: str, since: datetime) -> ReplayResult:
        """Move ``endpoint``'s cursor back to the first row applied at or after ``since``."""
        row = self._run(
            conn, "replay", {"endpoint": endpoint, "since": since}, "moving a webhook cursor back"
        ).fetchone()
        if row is None:
            raise ConfigurationError(
                f"webhook {endpoint!r} has no cursor in this sandbox yet "
                "(it gets one when the daemon first runs with it)"
            )
        return ReplayResult(endpoint, int(row[0]), row[1], row[2])

    def status(self, conn: Connection, endpoints: Sequence[str] = ()) -> list[EndpointStatus]:
        """Every endpoint's cursor here (only ``endpoints`` when given)."""
        rows = self._run(conn, "status", {}, "reading webhook cursors").fetchall()
        found = [EndpointStatus(*row) for row in rows]
        return [s for s in found if not endpoints or s.endpoint in endpoints]


def _row(row: Sequence[Any]) -> OutboxRow:
    return OutboxRow(
        id=int(row[0]),
        mapping=row[1],
        source=row[2],
        field=row[3],
        key_json=row[4],
        key_label=row[5],
        old_json=row[6],
        new_json=row[7],
        changed_at=row[8],
        applied_at=row[9],
    )
