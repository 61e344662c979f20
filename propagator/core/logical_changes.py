"""From a slot's decoded messages to the notifications the pipelines already take.

A logical slot tells what the triggers would have said (these keys changed, at
this commit time) and also where each transaction ends in the WAL, so the
capture can let the slot go only past what the sandbox already holds. Keys are
typed the way the triggers' JSON types them, so both captures feed the same keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from propagator.core.mapping import Key
from propagator.core.payload import Change, Resync
from propagator.core.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Relation,
    TupleData,
    Update,
)

__all__ = ["ChangeCollector", "Transaction", "WatchedRelation", "key_part"]

_INTEGER_OIDS = frozenset({20, 21, 23})  # int8, int2, int4
_NUMERIC_OID = 1700
_BOOLEAN_OID = 16


@dataclass(frozen=True, slots=True)
class WatchedRelation:
    """A production table the capture serves: its channel and key columns.

    ``schema`` None matches the table of that name in any schema (a setting
    without a schema means the one ``search_path`` finds; there is one).
    """

    schema: str | None
    name: str
    channel: str
    key_columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed production transaction: where it ends, its xid, and whether it
    changed a watched table (its keys wait in the collector until ``take``)."""

    end_lsn: int
    xid: int
    announced: bool


def key_part(text: str | bytes, type_oid: int) -> object:
    """A key column's text as the triggers' ``to_jsonb`` would type it.

    Integers and integral numerics become ints, booleans bools, everything else
    stays text (cast back to the column's type when production is read).
    """
    value = text.decode() if isinstance(text, bytes) else text
    if type_oid in _INTEGER_OIDS:
        return int(value)
    if type_oid == _BOOLEAN_OID:
        return value == "t"
    if type_oid == _NUMERIC_OID:
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        if number.is_finite() and abs(number.adjusted()) <= 40 and number == int(number):
            return int(number)
        return number
    return value


@dataclass(slots=True)
class _Route:
    channel: str
    positions: tuple[int, ...]  # of the key columns in the relation's columns
    types: tuple[int, ...]


class ChangeCollector:
    """Feeds on decoded messages; ``take`` hands over what committed since, one notification
    per table, stamped with the earliest commit time among them.

    One notification per transaction would cost the pipelines a call each, thousands a
    second; merged, a busy stream costs them one per read. A transaction touching more
    than ``max_keys`` keys of one table is announced as a resync of that table instead,
    as the triggers do, so memory stays bounded.
    """

    def __init__(self, watched: Sequence[WatchedRelation], *, max_keys: int) -> None:
        self._exact = {(w.schema, w.name): w for w in watched if w.schema is not None}
        self._by_name = {w.name: w for w in watched if w.schema is None}
        self.max_keys = max_keys
        self._routes: dict[int, _Route | None] = {}
        self._commit_time = 0.0
        self._xid = 0
        self._keys: dict[str, dict[Key, None]] = {}  # of the transaction being read
        self._resync: set[str] = set()
        self._taken_keys: dict[str, dict[Key, None]] = {}  # committed, not taken yet
        self._taken_since: dict[str, float] = {}
        self._taken_resync: dict[str, float] = {}

    def _watched(self, relation: Relation) -> WatchedRelation | None:
        return self._exact.get((relation.namespace, relation.name)) or self._by_name.get(
            relation.name
        )

    def _remember(self, relation: Relation) -> None:
        watched = self._watched(relation)
        if watched is None:
            self._routes[relation.relation_id] = None
            return
        names = [column.name for column in relation.columns]
        missing = [c for c in watched.key_columns if c not in names]
        if missing:
            # The publication no longer carries a key column: nothing can be routed by key.
            self._routes[relation.relation_id] = _Route(watched.channel, (), ())
            return
        positions = tuple(names.index(c) for c in watched.key_columns)
        types = tuple(relation.columns[i].type_oid for i in positions)
        self._routes[relation.relation_id] = _Route(watched.channel, positions, types)

    def feed(self, message: Message) -> Transaction | None:
        """Take one message; at a commit, the transaction's notifications (None otherwise)."""
        if isinstance(message, Insert | Update | Delete):
            route = self._routes.get(message.relation_id)
            if route is not None:
                self._collect(route, message)
        elif isinstance(message, Begin):
            self._commit_time = message.commit_time.timestamp()
            self._xid = message.xid
            self._keys.clear()
            self._resync.clear()
        elif isinstance(message, Commit):
            return self._commit(message)
        elif isinstance(message, Relation):
            self._remember(message)
        return None

    def _collect(self, route: _Route, message: Insert | Update | Delete) -> None:
        if route.channel in self._resync:
            return
        if not route.positions:
            self._resync.add(route.channel)
            return
        rows: Iterable[TupleData | None]
        if isinstance(message, Insert):
            rows = (message.new,)
        elif isinstance(message, Update):
            rows = (message.new, message.old)
        else:
            rows = (message.old,)
        keys = self._keys.setdefault(route.channel, {})
        for row in rows:
            key = None if row is None else _key_of(row, route)
            if key is not None:
                keys[key] = None
        if len(keys) > self.max_keys:
            self._resync.add(route.channel)
            keys.clear()

    def _commit(self, commit: Commit) -> Transaction:
        when = self._commit_time
        announced = False
        for channel, keys in self._keys.items():
            if keys and channel not in self._resync:
                self._taken_keys.setdefault(channel, {}).update(keys)
                self._taken_since[channel] = min(self._taken_since.get(channel, when), when)
                announced = True
        for channel in self._resync:
            self._taken_resync[channel] = min(self._taken_resync.get(channel, when), when)
            announced = True
        self._keys.clear()
        self._resync.clear()
        return Transaction(commit.end_lsn, self._xid, announced)

    def take(self) -> list[Change | Resync]:
        """What committed since the last call: one change per table, then any resync."""
        taken: list[Change | Resync] = [
            Change(tuple(keys), self._taken_since[channel], channel)
            for channel, keys in self._taken_keys.items()
        ]
        taken += [Resync(when, channel) for channel, when in sorted(self._taken_resync.items())]
        self._taken_keys, self._taken_since, self._taken_resync = {}, {}, {}
        return taken


def _key_of(row: TupleData, route: _Route) -> Key | None:
    """The key of a decoded row; None when a part is NULL or was not sent (as the triggers)."""
    if len(row) <= max(route.positions):
        return None
    parts: list[object] = []
    for position, type_oid in zip(route.positions, route.types, strict=True):
        value = row[position]
        if value is None or value is UNCHANGED:
            return None
        parts.append(key_part(value, type_oid))
    return tuple(parts)
