"""Decoding of ``pgoutput`` logical replication messages (protocol version 1).

Trigger-free capture reads production changes from a logical replication slot, so
each change arrives as one binary message; this turns its bytes into plain values
without a driver. Only the messages the daemon acts on are decoded: any other comes
back as ``Other``, so messages a newer server adds never stop the stream.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

__all__ = [
    "UNCHANGED", "Begin", "Commit", "Delete", "Insert", "MalformedMessage", "Message", "Other",
    "Relation", "RelationCache", "RelationColumn", "Truncate", "TupleData", "Unchanged", "Update",
    "Value", "decode",
]  # fmt: skip


class MalformedMessage(ValueError):
    """The bytes cannot be trusted as a message: truncated, garbled or another protocol."""


class Unchanged(enum.Enum):
    """A TOASTed value the change left alone: the server did not send it, it is not NULL."""

    UNCHANGED = "u"


UNCHANGED = Unchanged.UNCHANGED

Value: TypeAlias = str | bytes | Unchanged | None
TupleData: TypeAlias = tuple[Value, ...]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_IDENTITY_AND_COUNT = struct.Struct("!BH")
_FLAGS = struct.Struct("!B")
_TYPE = struct.Struct("!Ii")
_TRUNCATE = struct.Struct("!IB")
_NULL, _TOAST, _TEXT, _BINARY = b"nutb"
_NEW, _KEY = b"NK"
_REASONS = {UnicodeDecodeError: "invalid UTF-8", OverflowError: "timestamp out of range"}


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts; its commit time dates every change until ``Commit``."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction ends; ``end_lsn`` is where a consumer may confirm the slot to."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One published column, in the order tuple values arrive."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Part of the replica identity: present in a key-only old tuple."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape, sent before its first change and again after it is altered."""

    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row: every published column, in full (never ``UNCHANGED``)."""

    relation_id: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``old`` is sent only if the key changed (key-only) or the identity is FULL."""

    relation_id: int
    old: TupleData | None
    old_is_key_only: bool
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """Key-only ``old`` holds NULL for every column outside the replica identity."""

    relation_id: int
    old: TupleData
    old_is_key_only: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    """``options``: 1 is CASCADE, 2 is RESTART IDENTITY."""

    options: int
    relation_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Other:
    """A message the daemon does not act on (origin, type, logical message, newer kinds)."""

    tag: str


Message: TypeAlias = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Other


class _Cursor:
    """A read position in one message: the position is what an error reports."""

    __slots__ = ("data", "pos", "view")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 1

    def fail(self, reason: str) -> MalformedMessage:
        return MalformedMessage(f"{chr(self.data[0])!r} message: {reason} at offset {self.pos}")

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("unterminated string")
        text = str(self.view[self.pos : end], "utf-8")
        self.pos = end + 1
        return text

    def marker(self, allowed: bytes) -> int:
        value = self.data[self.pos]
        if value not in allowed:
            raise self.fail(f"expected one of {allowed.decode()!r}, found {chr(value)!r}")
        self.pos += 1
        return value

    def tuple_data(self) -> TupleData:
        """The hot path (one call per row): locals only, no call per column."""
        data, view, size = self.data, self.view, len(self.data)
        (count,) = _U16.unpack_from(data, self.pos)
        pos = self.pos + 2
        values: list[Value] = []
        append = values.append
        for _ in range(count):
            self.pos = pos  # a failure below reports the column's start
            kind = data[pos]
            if kind in (_NULL, _TOAST):
                append(None if kind == _NULL else UNCHANGED)
                pos += 1
            elif kind in (_TEXT, _BINARY):
                (length,) = _I32.unpack_from(data, pos + 1)
                start, pos = pos + 5, pos + 5 + length
                if length < 0 or pos > size:
                    raise self.fail(f"value of {length} bytes overruns the message")
                append(str(view[start:pos], "utf-8") if kind == _TEXT else data[start:pos])
            else:
                raise self.fail(f"unknown column kind {chr(kind)!r}")
        self.pos = pos
        return tuple(values)


def _begin(cursor: _Cursor) -> Begin:
    final_lsn, micros, xid = cursor.unpack(_BEGIN)
    return Begin(final_lsn, _PG_EPOCH + timedelta(microseconds=micros), xid)


def _commit(cursor: _Cursor) -> Commit:
    flags, commit_lsn, end_lsn, micros = cursor.unpack(_COMMIT)
    return Commit(flags, commit_lsn, end_lsn, _PG_EPOCH + timedelta(microseconds=micros))


def _relation(cursor: _Cursor) -> Relation:
    (relation_id,) = cursor.unpack(_U32)
    namespace, name = cursor.string(), cursor.string()
    identity, count = cursor.unpack(_IDENTITY_AND_COUNT)
    columns: list[RelationColumn] = []
    for _ in range(count):
        (flags,) = cursor.unpack(_FLAGS)
        column = cursor.string()
        type_oid, modifier = cursor.unpack(_TYPE)
        columns.append(RelationColumn(flags, column, type_oid, modifier))
    return Relation(relation_id, namespace, name, chr(identity), tuple(columns))


def _insert(cursor: _Cursor) -> Insert:
    (relation_id,) = cursor.unpack(_U32)
    cursor.marker(b"N")
    return Insert(relation_id, cursor.tuple_data())


def _update(cursor: _Cursor) -> Update:
    (relation_id,) = cursor.unpack(_U32)
    marker = cursor.marker(b"KON")
    old = None if marker == _NEW else cursor.tuple_data()
    if old is not None:
        cursor.marker(b"N")
    return Update(relation_id, old, marker == _KEY, cursor.tuple_data())


def _delete(cursor: _Cursor) -> Delete:
    (relation_id,) = cursor.unpack(_U32)
    key_only = cursor.marker(b"KO") == _KEY
    return Delete(relation_id, cursor.tuple_data(), key_only)


def _truncate(cursor: _Cursor) -> Truncate:
    count, options = cursor.unpack(_TRUNCATE)
    return Truncate(options, cursor.unpack(struct.Struct(f"!{count}I")))


_PARSERS: dict[int, Callable[[_Cursor], Message]] = dict(
    zip(b"BCRIUDT", (_begin, _commit, _relation, _insert, _update, _delete, _truncate), strict=True)
)


def decode(message: bytes | bytearray | memoryview) -> Message:
    """One message, whole: anything short, long or garbled is ``MalformedMessage``."""
    data = message if isinstance(message, bytes) else bytes(message)
    if not data:
        raise MalformedMessage("empty message")
    parse = _PARSERS.get(data[0])
    if parse is None:
        return Other(chr(data[0]))
    cursor = _Cursor(data)
    try:
        decoded = parse(cursor)
    except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
        raise cursor.fail(_REASONS.get(type(exc), "truncated")) from exc
    if cursor.pos != len(data):
        raise cursor.fail(f"{len(data) - cursor.pos} trailing bytes")
    return decoded


class RelationCache:
    """Relations by id, to read rows by column name (each session sends them first)."""

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._names: dict[int, tuple[str, ...]] = {}  # built once, not once per row

    def get(self, relation_id: int) -> Relation | None:
        return self._relations.get(relation_id)

    def remember(self, relation: Relation) -> None:
        """A relation is resent after ALTER TABLE: the newer shape replaces the older."""
        self._relations[relation.relation_id] = relation
        self._names[relation.relation_id] = tuple(column.name for column in relation.columns)

    def row(self, relation_id: int, data: TupleData) -> dict[str, Value]:
        """A row seen before its relation, or of another width, means a lost message."""
        names = self._names.get(relation_id)
        if names is None:
            raise MalformedMessage(f"unknown relation id {relation_id}: no Relation message seen")
        if len(names) != len(data):
            raise MalformedMessage(
                f"relation id {relation_id} has {len(names)} columns, the row has {len(data)}"
            )
        return dict(zip(names, data, strict=True))
