"""What the servers return from a checksum pass, compared: segment digests and row hashes.

Each server sends 8-byte values packed in one ``bytea`` (``int8send``, big-endian);
comparing them here runs in C (``array``, ``map``, ``set``), so a clean million-row
table costs a few milliseconds of Python whatever the number of segments.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Collection
from itertools import compress
from operator import ne

__all__ = [
    "compare_digests",
    "differing_segments",
    "row_locations",
    "rows_among",
    "unmatched_hashes",
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


def unmatched_hashes(production: bytes, sandbox: bytes) -> tuple[int, ...]:
    """The row hashes one side has and the other lacks, ascending, from packed ``int8send`` values.

    A row's hash covers its key and every mapped value, so a hash both sides have is
    a row present and equal on both; what is left is every changed, missing and
    extra row, and nothing else.
    """
    for packed in (production, sandbox):
        if len(packed) % 8:
            raise ValueError(f"the packed row hashes are {len(packed)} bytes, not 8 a row")
    return tuple(sorted(set(_int8s(production)).symmetric_difference(_int8s(sandbox))))


def _int8s(packed: bytes) -> array[int]:
    """Big-endian 8-byte integers (PostgreSQL's ``int8send``) as an array."""
    numbers = array("q", packed)
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
    segments = range(len(values)) if ids is None else _int4s(ids)
    return dict(zip(segments, values, strict=True))


def _int4s(packed: bytes) -> array[int]:
    """Big-endian 4-byte integers (PostgreSQL's ``int4send``) as an array."""
    numbers = array("i", packed)
    if sys.byteorder == "little":
        numbers.byteswap()
    return numbers


def rows_among(packed_hashes: bytes, wanted: Collection[int]) -> list[int]:
    """The positions, in one side's packed row hashes, of the rows whose hash is ``wanted``."""
    hashes = _int8s(packed_hashes)
    return list(compress(range(len(hashes)), map(wanted.__contains__, hashes)))


_TID = struct.Struct(">IH")  # tidsend: block number, then offset in the block


def row_locations(packed: bytes, positions: list[int]) -> tuple[tuple[int, int], ...]:
    """``(block, offset)`` of the rows at ``positions`` among packed ``tidsend`` values."""
    if len(packed) % _TID.size:
        raise ValueError(f"the packed row locations are {len(packed)} bytes, not 6 a row")
    return tuple(_TID.unpack_from(packed, position * _TID.size) for position in positions)
