"""The pgoutput decoder on messages built byte by byte, as the server lays them out."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    MalformedMessage,
    Other,
    Relation,
    RelationCache,
    RelationColumn,
    Truncate,
    Unchanged,
    Update,
    Value,
    decode,
)

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
WHEN = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)


# A small encoder, written from the protocol documentation rather than from the decoder.


def micros(moment: datetime) -> int:
    return (moment - PG_EPOCH) // timedelta(microseconds=1)


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: Value) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        elif isinstance(value, str):
            out += b"t" + struct.pack("!i", len(value.encode())) + value.encode()
        else:
            assert isinstance(value, bytes)
            out += b"b" + struct.pack("!i", len(value)) + value
    return out


def begin(final_lsn: int, moment: datetime, xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, micros(moment), xid)


def commit(commit_lsn: int, end_lsn: int, moment: datetime, flags: int = 0) -> bytes:
    return b"C" + struct.pack("!BQQq", flags, commit_lsn, end_lsn, micros(moment))


def relation(
    relation_id: int,
    namespace: str,
    name: str,
    identity: str,
    columns: list[tuple[int, str, int, int]],
) -> bytes:
    out = b"R" + struct.pack("!I", relation_id) + cstring(namespace) + cstring(name)
    out += identity.encode() + struct.pack("!H", len(columns))
    for flags, column, type_oid, modifier in columns:
        out += struct.pack("!B", flags) + cstring(column) + struct.pack("!Ii", type_oid, modifier)
    return out


def insert(relation_id: int, new: bytes) -> bytes:
    return b"I" + struct.pack("!I", relation_id) + b"N" + new


def update(relation_id: int, new: bytes, old: bytes | None = None, marker: bytes = b"K") -> bytes:
    head = b"U" + struct.pack("!I", relation_id)
    return head + (b"" if old is None else marker + old) + b"N" + new


def delete(relation_id: int, old: bytes, marker: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", relation_id) + marker + old


def truncate(options: int, relation_ids: list[int]) -> bytes:
    head = b"T" + struct.pack("!IB", len(relation_ids), options)
    return head + b"".join(struct.pack("!I", oid) for oid in relation_ids)


JOBS = relation(
    16_385,
    "public",
    "jobs",
    "d",
    [(1, "id", 23, -1), (0, "title", 1043, 104), (0, "blob", 17, -1), (0, "notes", 25, -1)],
)
VALID = {
    "begin": begin(0x1_6B37_48F0, WHEN, 771),
    "commit": commit(0x1_6B37_48F0, 0x1_6B37_4920, WHEN),
    "relation": JOBS,
    "insert": insert(16_385, tuple_data("7", "Zoë ✓ 日本", b"\x00\xff", None)),
    "update": update(16_385, tuple_data("7", "b", None, UNCHANGED)),
    "update-key": update(
        16_385, tuple_data("8", "b", None, None), tuple_data("7", None, None, None)
    ),
    "update-full": update(16_385, tuple_data("7", "b"), tuple_data("7", "a"), b"O"),
    "delete": delete(16_385, tuple_data("7", None, None, None)),
    "truncate": truncate(3, [16_385, 16_390, 4_000_000_000]),
}


def test_begin_carries_lsn_xid_and_a_utc_commit_time() -> None:
    """The commit time is microseconds since 2000-01-01 and comes back exactly, in UTC."""
    decoded = decode(VALID["begin"])
    assert decoded == Begin(final_lsn=0x1_6B37_48F0, commit_time=WHEN, xid=771)
    assert isinstance(decoded, Begin)
    assert decoded.commit_time.isoformat() == "2026-12-06T05:00:00.123456+00:00"
    assert decoded.commit_time.utcoffset() == timedelta(0)


def test_commit_time_before_the_postgresql_epoch() -> None:
    """A negative microsecond count is a time before 2000, not an error."""
    moment = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    decoded = decode(begin(1, moment, 2))
    assert isinstance(decoded, Begin)
    assert decoded.commit_time == moment


def test_commit() -> None:
    assert decode(VALID["commit"]) == Commit(
        flags=0, commit_lsn=0x1_6B37_48F0, end_lsn=0x1_6B37_4920, commit_time=WHEN
    )


def test_relation_with_utf8_names_and_key_flags() -> None:
    """Names are UTF-8; the key flag, type OIDs and type modifiers (-1: none) are kept."""
    message = relation(
        42, "ventes", "clients_été", "f", [(1, "clé", 23, -1), (0, "prénom", 1043, 68)]
    )
    assert decode(message) == Relation(
        relation_id=42,
        namespace="ventes",
        name="clients_été",
        replica_identity="f",
        columns=(RelationColumn(1, "clé", 23, -1), RelationColumn(0, "prénom", 1043, 68)),
    )
    decoded = decode(message)
    assert isinstance(decoded, Relation)
    assert [column.is_key for column in decoded.columns] == [True, False]


def test_relation_in_pg_catalog_has_an_empty_namespace() -> None:
    decoded = decode(relation(1259, "", "pg_class", "n", []))
    assert isinstance(decoded, Relation)
    assert (decoded.namespace, decoded.columns) == ("", ())


def test_insert_with_text_binary_and_null_values() -> None:
    """Text is decoded as UTF-8, binary stays bytes, NULL is None."""
    assert decode(VALID["insert"]) == Insert(16_385, ("7", "Zoë ✓ 日本", b"\x00\xff", None))


def test_empty_text_and_empty_binary_values_are_not_null() -> None:
    assert decode(insert(1, tuple_data("", b"", None))) == Insert(1, ("", b"", None))


def test_update_without_old_tuple_keeps_unchanged_toast() -> None:
    """No old tuple: the key did not change; an unsent TOASTed value is UNCHANGED, not NULL."""
    decoded = decode(VALID["update"])
    assert decoded == Update(16_385, None, False, ("7", "b", None, UNCHANGED))
    assert isinstance(decoded, Update)
    assert isinstance(decoded.new[3], Unchanged)
    assert decoded.new[3] is not None


def test_update_with_a_key_only_old_tuple() -> None:
    """'K': the key changed; the old tuple has the key and NULL elsewhere."""
    decoded = decode(VALID["update-key"])
    assert decoded == Update(16_385, ("7", None, None, None), True, ("8", "b", None, None))


def test_update_with_a_full_old_tuple() -> None:
    """'O': REPLICA IDENTITY FULL sends the whole old row."""
    assert decode(VALID["update-full"]) == Update(16_385, ("7", "a"), False, ("7", "b"))


def test_delete_key_only_and_full() -> None:
    assert decode(VALID["delete"]) == Delete(16_385, ("7", None, None, None), True)
    full = decode(delete(9, tuple_data("7", "a"), b"O"))
    assert full == Delete(9, ("7", "a"), False)


def test_truncate_of_several_relations() -> None:
    """Relation ids are unsigned 32-bit OIDs; options 1 (CASCADE) | 2 (RESTART IDENTITY)."""
    assert decode(VALID["truncate"]) == Truncate(3, (16_385, 16_390, 4_000_000_000))
    assert decode(truncate(0, [])) == Truncate(0, ())


@pytest.mark.parametrize(
    "message",
    [
        b"O" + struct.pack("!Q", 5) + cstring("origin"),
        b"Y" + struct.pack("!I", 16_400) + cstring("public") + cstring("mood"),
        b"M\x01" + struct.pack("!Q", 5) + cstring("prefix") + struct.pack("!i", 2) + b"hi",
        b"S" + struct.pack("!IB", 5, 1),
        b"E",
        b"c",
        b"A",
        b"b",
        b"P",
        b"K",
        b"r",
        b"p",
        b"\xff garbage",
    ],
)
def test_messages_the_daemon_does_not_use_are_other(message: bytes) -> None:
    """Origin, type, logical messages, streaming and two-phase kinds, unknown tags: skipped."""
    assert decode(message) == Other(chr(message[0]))


def test_accepts_bytearray_and_memoryview() -> None:
    expected = decode(VALID["insert"])
    assert decode(bytearray(VALID["insert"])) == expected
    assert decode(memoryview(VALID["insert"])) == expected


def test_empty_message_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="empty"):
        decode(b"")


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncation_is_malformed(name: str) -> None:
    """Cut anywhere, a valid message raises MalformedMessage and nothing else."""
    message = VALID[name]
    for cut in range(len(message)):
        with pytest.raises(MalformedMessage):
            decode(message[:cut])


@pytest.mark.parametrize("name", sorted(VALID))
def test_trailing_bytes_are_malformed(name: str) -> None:
    """A message longer than its layout is another protocol (such as streamed changes)."""
    with pytest.raises(MalformedMessage, match="1 trailing bytes"):
        decode(VALID[name] + b"\0")


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (insert(5, b""), r"^'I' message: truncated at offset 6$"),
        (b"I" + struct.pack("!I", 5) + b"X" + tuple_data("a"), r"'I'.*expected one of 'N'.*'X'"),
        (update(5, tuple_data("a"), tuple_data("b"), b"Z"), r"'U'.*expected one of 'KON'"),
        (delete(5, tuple_data("a"), b"N"), r"^'D'.*expected one of 'KO', found 'N' at offset 5$"),
        (insert(5, b"\x00\x01x"), r"^'I' message: unknown column kind 'x' at offset 8$"),
        (insert(5, b"\x00\x01t\xff\xff\xff\xff"), r"value of -1 bytes overruns.*offset 8$"),
        (insert(5, b"\x00\x01t\x00\x00\x00\x09abc"), r"value of 9 bytes overruns"),
        (insert(5, b"\x00\x01t\x00\x00\x00\x02\xc3\x28"), r"^'I' message: invalid UTF-8"),
        (relation(5, "s", "t", "d", [])[:-4], r"'R' message: unterminated string at offset 7$"),
        (b"R" + struct.pack("!I", 5) + b"\xff\0t\0d\0\0", r"'R' message: invalid UTF-8"),
        (b"B" + struct.pack("!QqI", 1, 2**62, 3), r"'B' message: timestamp out of range"),
        (b"C" + struct.pack("!BQQq", 0, 1, 2, -(2**62)), r"'C' message: timestamp out of range"),
        (truncate(0, [1, 2])[:-1], r"'T' message: truncated"),
        (b"T" + struct.pack("!IB", 2**32 - 1, 0), r"'T' message: truncated"),
    ],
)
def test_garbled_messages_name_the_tag_and_offset(message: bytes, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        decode(message)


@given(st.sampled_from(b"BCRIUDT"), st.binary(max_size=80))
def test_arbitrary_bytes_never_raise_anything_but_malformed(tag: int, body: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        decode(bytes([tag]) + body)


VALUES = st.one_of(st.none(), st.just(UNCHANGED), st.text(max_size=20), st.binary(max_size=20))


@given(st.integers(0, 2**32 - 1), st.lists(VALUES, max_size=30))
def test_tuple_values_round_trip(relation_id: int, values: list[Value]) -> None:
    assert decode(update(relation_id, tuple_data(*values))) == Update(
        relation_id, None, False, tuple(values)
    )


def test_relation_cache_maps_column_names_to_values() -> None:
    cache = RelationCache()
    jobs = decode(JOBS)
    assert isinstance(jobs, Relation)
    cache.remember(jobs)
    assert cache.get(16_385) is jobs
    assert cache.get(1) is None
    change = decode(VALID["update"])
    assert isinstance(change, Update)
    assert cache.row(change.relation_id, change.new) == {
        "id": "7",
        "title": "b",
        "blob": None,
        "notes": UNCHANGED,
    }


def test_relation_cache_rejects_unknown_relations_and_other_widths() -> None:
    cache = RelationCache()
    with pytest.raises(MalformedMessage, match="unknown relation id 16385"):
        cache.row(16_385, ("7",))
    jobs = decode(JOBS)
    assert isinstance(jobs, Relation)
    cache.remember(jobs)
    with pytest.raises(MalformedMessage, match="has 4 columns, the row has 2"):
        cache.row(16_385, ("7", "b"))


def test_relation_cache_takes_the_newer_shape_after_alter_table() -> None:
    """A relation resent after ALTER TABLE ADD COLUMN replaces the remembered one."""
    cache = RelationCache()
    before = relation(7, "public", "t", "d", [(1, "id", 23, -1)])
    after = relation(7, "public", "t", "d", [(1, "id", 23, -1), (0, "added", 25, -1)])
    for message in (before, after):
        decoded = decode(message)
        assert isinstance(decoded, Relation)
        cache.remember(decoded)
    assert cache.row(7, ("1", None)) == {"id": "1", "added": None}


def test_messages_are_frozen() -> None:
    decoded = decode(VALID["begin"])
    assert isinstance(decoded, Begin)
    with pytest.raises(AttributeError):
        decoded.xid = 5  # type: ignore[misc]
