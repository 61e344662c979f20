"""What the servers return from a checksum pass, compared: segment digests and row hashes.

Each server sends 8-byte values packed in one ``bytea`` (``int8send``, big-endian);
comparing them here runs in C (``array``, ``map``, ``set``), so a clean million-row
table costs a few milliseconds of Python whatever the number of segments.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import compress
from operator import ne

__all__ = [
    "compare_digests",
    "differing_segments",
    "row_hashes",
    "row_locations",
    "rows_to_read",
]


def compare_digests(production: bytes, sandbox: bytes) -> tuple[int, ...]:
    """The segments whose digests differ, given each side's digests packed in segment order.

    A digest is 8 bytes and covers the segment's rows and their count, so equal
    digests mean equal segments; the comparison runs in C either way.
    """
    if len(production) != len(sandbox) or len(production) % 8:
        raise ValueError(
            f"the packed digests are {len(production)} and {len(sandbox)} bytes long, "
            "not one 8-byte digest a segment on both sides"
        )
    if production == sandbox:
        return ()
    production_digests, sandbox_digests = array("q", production), array("q", sandbox)
    return tuple(
        compress(range(len(production_digests)), map(ne, production_digests, sandbox_digests))
    )


def differing_segments(
    production: bytes,
    production_ids: bytes | None,
    sandbox: bytes,
    sandbox_ids: bytes | None,
) -> tuple[int, ...]:
    """The segments whose digests differ, or that only one side has rows in, ascending.

    Each side sends its digests in segment order and, unless it has a digest for
    every segment from 0 on, the 4-byte segment numbers they belong to (a segment
    without rows has no digest: it differs from one that has rows).
    """
    if production_ids is None and sandbox_ids is None:
        return compare_digests(production, sandbox)
    production_map = _segment_map(production, production_ids)
    sandbox_map = _segment_map(sandbox, sandbox_ids)
    if production_map == sandbox_map:
        return ()
    return tuple(
        sorted(
            segment
            for segment in production_map.keys() | sandbox_map.keys()
            if production_map.get(segment) != sandbox_map.get(segment)
        )
    )


def _big_endian(typecode: str, packed: bytes) -> array[int]:
    """PostgreSQL's ``int8send`` (``"q"``) or ``int4send`` (``"i"``) values as an array."""
    numbers = array(typecode, packed)
    if sys.byteorder == "little":
        numbers.byteswap()
    return numbers


def _segment_map(digests: bytes, ids: bytes | None) -> dict[int, int]:
    if len(digests) % 8 or (ids is not None and len(ids) * 2 != len(digests)):
        raise ValueError(
            f"the packed digests are {len(digests)} bytes long with "
            f"{'no' if ids is None else len(ids)} bytes of segment numbers, "
            "not one 8-byte digest and one 4-byte number a segment"
        )
    values = array("q", digests)
    segments = range(len(values)) if ids is None else _big_endian("i", ids)
    return dict(zip(segments, values, strict=True))


_RECORD = 16  # a row-hash pass sends (key hash, row hash) a row


def rows_to_read(production: bytes, sandbox: bytes) -> tuple[list[int], list[int]]:
    """Positions of the rows each side must read, from its packed ``(key hash, row hash)``
    records (``int8send`` pairs) sorted by key hash, then row hash.

    A row whose record the other side has at the matching place is equal there and
    skipped; every other row is read: changed rows on both sides, missing and extra
    ones on theirs. With the same keys on both sides (values drifted, the usual case)
    the row hashes are compared position by position, in C; otherwise the records are
    merged by key hash, equal runs skipped a block at a time.
    """
    for packed in (production, sandbox):
        if len(packed) % _RECORD:
            raise ValueError(f"the packed row hashes are {len(packed)} bytes, not 16 a row")
    production_records, sandbox_records = _big_endian("q", production), _big_endian("q", sandbox)
    production_keys, sandbox_keys = production_records[0::2], sandbox_records[0::2]
    if production_keys == sandbox_keys:
        rows = production_records[1::2], sandbox_records[1::2]
        positions = list(compress(range(len(rows[0])), map(ne, *rows)))
        return positions, list(positions)
    return _merge(memoryview(production), production_keys, memoryview(sandbox), sandbox_keys)


def _merge(
    production: memoryview,
    production_keys: array[int],
    sandbox: memoryview,
    sandbox_keys: array[int],
) -> tuple[list[int], list[int]]:
    """``rows_to_read`` where the keys differ: a merge by key hash."""
    ends = len(production_keys), len(sandbox_keys)
    read: tuple[list[int], list[int]] = ([], [])
    i = j = 0
    while i < ends[0] and j < ends[1]:
        run = _equal_run(production, i, sandbox, j, min(ends[0] - i, ends[1] - j))
        i, j = i + run, j + run
        if i == ends[0] or j == ends[1]:
            break
        production_key, sandbox_key = production_keys[i], sandbox_keys[j]
        if production_key <= sandbox_key:  # equal keys: the row changed, read on both
            read[0].append(i)
            i += 1
        if sandbox_key <= production_key:
            read[1].append(j)
            j += 1
    read[0].extend(range(i, ends[0]))
    read[1].extend(range(j, ends[1]))
    return read


def _equal_run(a: memoryview, i: int, b: memoryview, j: int, limit: int) -> int:
    """How many records from ``a``'s ``i``-th on equal ``b``'s from the ``j``-th (<= ``limit``)."""

    def same(length: int) -> bool:
        return a[_RECORD * i : _RECORD * (i + length)] == b[_RECORD * j : _RECORD * (j + length)]

    if limit == 0 or not same(1):
        return 0
    low, high = 1, 2  # same(low) holds; same(high) does not, or high is past the limit
    while high <= limit and same(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        if same(middle):
            low = middle
        else:
            high = middle
    return low


_TID = struct.Struct(">IH")  # tidsend: block number, then offset in the block


def row_locations(packed: bytes, positions: list[int]) -> tuple[tuple[int, int], ...]:
    """``(block, offset)`` of the rows at ``positions`` among packed ``tidsend`` values."""
    if len(packed) % _TID.size:
        raise ValueError(f"the packed row locations are {len(packed)} bytes, not 6 a row")
    return tuple(_TID.unpack_from(packed, position * _TID.size) for position in positions)


def row_hashes(records: bytes, positions: list[int]) -> tuple[int, ...]:
    """The row hashes of the records at ``positions`` (see ``rows_to_read``)."""
    hashes = _big_endian("q", records)[1::2]
    return tuple(hashes[position] for position in positions)
