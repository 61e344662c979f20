"""One side's checksum statements: digests per segment, and the rows of chosen segments.

Both sides are hashed with the same expressions over their own columns (the
production side through the transforms' SQL equivalents), so equal rows give
equal hashes on either server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from propagator.adapters.parameters import filter_condition
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.core.segments import ChecksumLayout, CompareAs, FieldPlan, ValueKind
from propagator.errors import Side
from propagator.services.checksum_hashing import (
    Hashing,
    natural,
    transformed,
    value_hash,
    xor_all,
)

__all__ = ["SideQueries", "side_queries"]

_KEY_SEED = 0x5EED0000
_FIELD_SEED = 0x5EED2000
_NULL_FLAGS_SEED = 0x5EED3000
_ROW_SEED = 0x5EED4000
_NULL_SEED = 0x5EED6000
_COUNT_SEED = 0x5EED5000
# A restriction to segments of a mask below this is a bitmap (at most 128 KiB).
_BITMAP_MASK_LIMIT = 1 << 20


def _unused_name(taken: set[str], wanted: str) -> str:
    """``wanted``, or ``wanted_2``, ``wanted_3``… whichever no column of the table is called."""
    name, suffix = wanted, 1
    while name in taken:
        suffix += 1
        name = f"{wanted}_{suffix}"
    return name


@dataclass(frozen=True, slots=True)
class SideQueries:
    """One side's hashing, filtering and ordering, composed once; passes built from them.

    Every pass reads the table through one inner query that computes each row's
    key hash once (``OFFSET 0`` keeps the planner from inlining it twice) and
    passes on only the columns the pass needs. A pass restricted to some segments
    tests each row's key hash in the scan itself (the inner query then hashes the
    key again for the rows kept only) and hashes the mapped values of those rows only.
    """

    row_hash: sql.Composable  # over the inner query's columns (the same names)
    whole_row_hash: sql.Composable | None  # over the table's own columns; None: use the inner
    count_hash: sql.Composable  # of a group's count(*)
    table: sql.Composable
    condition: sql.Composable
    read: sql.Composable  # the inner query's columns: key hash, then each needed column once
    hashed_read: sql.Composable  # the same, less the key columns no row hash reads
    key_hash: sql.Composable  # over the table's own columns
    hash_alias: sql.Identifier
    columns: sql.Composable
    order: sql.Composable
    location: sql.Identifier | None  # the inner query's name for ctid; None: not addressable

    def inner(
        self,
        *,
        located: bool = False,
        every_column: bool = False,
        segments: tuple[int, tuple[int, ...]] | None = None,
        source: sql.Composable | None = None,
        also: sql.Composable | None = None,
    ) -> sql.Composed:
        """The inner query; ``segments`` (mask, numbers) keeps the rows of those only.

        ``source`` reads the rows from it instead of the table (a sample of it);
        ``also`` is one more condition on the table's own columns.
        """
        read = self.read if every_column else self.hashed_read
        if located and self.location is not None:
            read = sql.SQL("{}, ctid AS {}").format(read, self.location)
        condition = self.condition
        if segments is not None:
            condition = sql.SQL("{} AND {}").format(condition, self._in_segments(*segments))
        if also is not None:
            condition = sql.SQL("{} AND {}").format(condition, also)
        return sql.SQL("(SELECT {read} FROM {source} WHERE {condition} OFFSET 0) AS s").format(
            read=read, source=source or self.table, condition=condition
        )

    def _in_segments(self, mask: int, segments: tuple[int, ...]) -> sql.Composed:
        """Whether a row's key hash falls in one of ``segments`` of ``mask``.

        Segments of a mask below 2^20 are a bitmap tested with ``get_bit``, one
        array lookup a row: ``= ANY`` hashes every row's segment number into a
        set, ~30% of a pass restricted to 27% of the rows. Literals, not
        parameters: a production filter may contain '%'.
        """
        segment = sql.SQL("({} & {})").format(self.key_hash, sql.Literal(mask))
        if mask >= _BITMAP_MASK_LIMIT:
            return sql.SQL("{} = ANY({}::int8[])").format(segment, sql.Literal(list(segments)))
        bitmap = bytearray((mask >> 3) + 1)
        for number in segments:
            bitmap[number >> 3] |= 1 << (number & 7)  # get_bit's order: low bit first
        return sql.SQL("get_bit({}::bytea, {}::int4) = 1").format(
            sql.Literal(bytes(bitmap)), segment
        )

    def digests(self, count: int) -> sql.Composed:
        """``(rows, digests, segment numbers)`` of every segment of ``count``.

        A segment's digest is the XOR of its row hashes and a hash of its row
        count, so equal digests mean the same rows and the same number of them;
        8 bytes a segment keep a clean table's first pass small whatever its
        size. Digests come packed in segment order; the 4-byte segment numbers
        come only when some segment has no rows (NULL when all do, as nearly
        always on a table with more rows than segments).
        """
        return self._packed_digests(count - 1, None, count)

    def whole_digest(self) -> sql.Composed:
        """``(rows, digest, NULL)`` of the whole table, as if it were one segment.

        No grouping: a hash aggregate costs more than hashing itself, so a clean
        table is proven equal for about the cost of reading it, and the segmented
        pass runs only where something differs.
        """
        query = sql.SQL(
            "SELECT count(*)::int8, coalesce(int8send(bit_xor({row_hash}) # {count_hash}), "
            "''::bytea), NULL::bytea FROM {source}"
        )
        if self.whole_row_hash is None:
            return query.format(
                row_hash=self.row_hash, count_hash=self.count_hash, source=self.inner()
            )
        # One mapped value: the key hash is needed once a row, so the table is read
        # directly (the inner query that computes it once costs ~10% of the pass).
        source = sql.SQL("{} WHERE {}").format(self.table, self.condition)
        return query.format(row_hash=self.whole_row_hash, count_hash=self.count_hash, source=source)

    def finer_digests(
        self, count: int, differing: tuple[int, ...], fine_count: int
    ) -> sql.Composed:
        """``(rows, digests, segment numbers)`` at the ``fine_count`` level, of the rows of
        the ``differing`` segments of ``count`` only (their finer segments ``c + k * count``).
        """
        return self._packed_digests(fine_count - 1, (count - 1, differing), None)

    def _packed_digests(
        self, mask: int, segments: tuple[int, tuple[int, ...]] | None, every: int | None
    ) -> sql.Composed:
        """The row count, and the digests of the segments of ``mask`` that have rows.

        The segment numbers are left out when the segments are exactly 0 to
        ``every - 1`` (``None``: always sent). Grouping straight into the packed
        values, with no join to a list of wanted segments, keeps the pass a scan
        and one small hash table: a join sized by the planner's guess of the
        groups (it cannot know a masked hash has few values) cost as much again.
        """
        dense = (
            sql.SQL("false")
            if every is None
            else sql.SQL("count(*) = {}").format(sql.Literal(every))
        )
        return sql.SQL(
            "SELECT coalesce(sum(g.n), 0)::int8, "
            "coalesce(string_agg(int8send(g.d), ''::bytea ORDER BY g.segment), ''::bytea), "
            "CASE WHEN NOT {dense} THEN "
            "coalesce(string_agg(int4send(g.segment), ''::bytea ORDER BY g.segment), ''::bytea) "
            "END FROM ("
            "SELECT (s.{h} & {mask})::int4 AS segment, count(*) AS n, "
            "bit_xor({row_hash}) # {count_hash} AS d FROM {inner} GROUP BY 1"
            ") AS g"
        ).format(
            dense=dense,
            h=self.hash_alias,
            mask=sql.Literal(mask),
            row_hash=self.row_hash,
            count_hash=self.count_hash,
            inner=self.inner(segments=segments),
        )

    def row_hashes(self, mask: int, differing: tuple[int, ...]) -> sql.Composed:
        """``(rows, records, packed ctids)`` of the rows of the ``differing`` segments.

        A record is a row's key hash and row hash (``int8send`` each, 16 bytes), in
        key hash order, so two sides with the same keys line up row by row. The ctids
        (``tidsend``, 6 bytes a row, in the same order) come only where rows can be
        fetched again by them; elsewhere NULL.
        """
        located = self.location is not None
        locations = (
            sql.SQL("coalesce(string_agg(tidsend(r.t), ''::bytea ORDER BY r.k, r.h), ''::bytea)")
            if located
            else sql.SQL("NULL::bytea")
        )
        return sql.SQL(
            "SELECT count(*)::int8, coalesce(string_agg(int8send(r.k) || int8send(r.h), "
            "''::bytea ORDER BY r.k, r.h), ''::bytea), {locations} FROM ("
            "SELECT s.{key} AS k, {row_hash} AS h{location} FROM {inner} OFFSET 0) AS r"
        ).format(
            locations=locations,
            key=self.hash_alias,
            row_hash=self.row_hash,
            location=sql.SQL(", s.{} AS t").format(self.location) if located else sql.SQL(""),
            inner=self.inner(located=True, segments=(mask, differing)),
        )

    def rows_at(self, locations: tuple[tuple[int, int], ...]) -> sql.Composed:
        """The key-ordered rows at these ``(block, offset)`` ctids, read from this snapshot."""
        tids = "{" + ",".join(f'"({block},{offset})"' for block, offset in locations) + "}"
        return sql.SQL(
            "SELECT {columns} FROM {table} WHERE ctid = ANY({tids}::tid[]) AND {condition} "
            "ORDER BY {order}"
        ).format(
            columns=self.columns,
            table=self.table,
            tids=sql.Literal(tids),
            condition=self.condition,
            order=self.order,
        )

    def rows(
        self,
        mask: int,
        differing: tuple[int, ...] | None,
        hashes: tuple[int, ...] | None = None,
    ) -> sql.Composed:
        """The key-ordered rows of the ``differing`` segments of ``mask`` (None: every row),
        only those whose row hash is one of ``hashes`` when given."""
        if differing is None:  # every row: no need to hash again
            every = sql.SQL("SELECT {columns} FROM {table} WHERE {condition} ORDER BY {order}")
            return every.format(
                columns=self.columns, table=self.table, condition=self.condition, order=self.order
            )
        restriction: sql.Composable = sql.SQL("")
        if hashes is not None:
            restriction = sql.SQL(" WHERE {} = ANY({}::int8[])").format(
                self.row_hash, sql.Literal(list(hashes))
            )
        return sql.SQL("SELECT {columns} FROM {inner}{restriction} ORDER BY {order}").format(
            columns=self.columns,
            inner=self.inner(every_column=True, segments=(mask, differing)),
            restriction=restriction,
            order=self.order,
        )


def side_queries(
    layout: ChecksumLayout,
    table: TableInfo,
    side: Side,
    hashing: Hashing,
    where: str | None,
    *,
    addressable: bool = False,
) -> SideQueries:
    """The statements of one side, hashing, filtering and ordering its rows."""
    production = side == "production"
    key_columns = [k.column for k in layout.keys]
    value_columns = [f.source if production else f.target for f in layout.fields]
    needed = list(dict.fromkeys((*key_columns, *value_columns)))
    hash_alias = sql.Identifier(_unused_name(set(table.columns), "key_hash"))
    location = sql.Identifier(_unused_name(set(table.columns), "row_location"))
    condition: sql.Composable = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in key_columns
    )
    if where:
        condition = sql.SQL("{} AND ({})").format(filter_condition(where), condition)
    key_hash = _key_hash(layout, side, hashing)
    inner_key = sql.SQL("s.{}").format(hash_alias)
    return SideQueries(
        row_hash=_row_hash(layout, side, hashing, inner_key),
        whole_row_hash=(
            _keyed_row_hash(layout, side, key_hash)
            if hashing == "builtin" and len(layout.fields) == 1
            else None
        ),
        count_hash=value_hash(
            sql.SQL("count(*)"), ValueKind.INTEGER, CompareAs.INT8, _COUNT_SEED, hashing, side
        ),
        table=table_identifier(table.name),
        condition=condition,
        read=_read(key_hash, hash_alias, needed),
        hashed_read=_read(key_hash, hash_alias, dict.fromkeys(value_columns)),
        key_hash=key_hash,
        hash_alias=hash_alias,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in (*key_columns, *value_columns)),
        order=sql.SQL(", ").join(
            sql.SQL('{} COLLATE "C"').format(sql.Identifier(c))
            if table.column(c, "key").needs_c_collation
            else sql.Identifier(c)
            for c in key_columns
        ),
        location=location if addressable else None,
    )


def _key_hash(layout: ChecksumLayout, side: Side, hashing: Hashing) -> sql.Composable:
    """The key's hash: it places a row in its segment (low bits) and enters the row's hash."""
    key_hashes: list[sql.Composable] = []
    for position, key in enumerate(layout.keys):
        kind = key.production if side == "production" else key.sandbox
        expr = natural(key.column, kind)
        key_hashes.append(
            value_hash(
                expr, kind, key.compare_as, _KEY_SEED + position, hashing, side, finite=key.finite
            )
        )
    return xor_all(key_hashes)


def _read(
    key_hash: sql.Composable, hash_alias: sql.Identifier, columns: Iterable[str]
) -> sql.Composable:
    """An inner query's columns: the key hash, then ``columns``."""
    return sql.SQL(", ").join(
        [sql.SQL("{} AS {}").format(key_hash, hash_alias), *map(sql.Identifier, columns)]
    )


def _row_hash(
    layout: ChecksumLayout, side: Side, hashing: Hashing, key: sql.Composable
) -> sql.Composable:
    """A row's hash: its key's hash mixed with each mapped value's and which of them are NULL."""
    if hashing == "builtin":
        return _keyed_row_hash(layout, side, key)
    value_hashes: list[sql.Composable] = []
    null_flags: list[sql.Composable] = []
    for position, field in enumerate(layout.fields):
        expr, kind = _field_value(field, side)
        value = value_hash(expr, kind, field.compare_as, _FIELD_SEED + position, hashing, side)
        value_hashes.append(sql.SQL("coalesce({}, 0)").format(value))
        null_flags.append(
            sql.SQL("(CASE WHEN {} IS NULL THEN {} ELSE 0 END)").format(
                expr, sql.Literal(1 << position)
            )
        )
    flags = sql.SQL("(") + sql.SQL(" + ").join(null_flags) + sql.SQL(")::int8")
    flags_hash = value_hash(
        flags, ValueKind.INTEGER, CompareAs.INT8, _NULL_FLAGS_SEED, hashing, side
    )
    # Key and values are mixed through one more hash: a digest XORing ``key ^ value``
    # directly would not change when two rows of a segment exchange their values.
    mixed = sql.SQL("({} # {})").format(key, xor_all([flags_hash, *value_hashes]))
    return value_hash(mixed, ValueKind.INTEGER, CompareAs.INT8, _ROW_SEED, hashing, side)


def _keyed_row_hash(layout: ChecksumLayout, side: Side, key: sql.Composable) -> sql.Composable:
    """The built-in row hash: each mapped value hashed with its row's key hash as the seed.

    A value's hash then depends on the row it is in, so two rows of a segment exchanging
    their values change its digest, with no second hash mixing key and values (the md5
    form has one). A NULL value is a hash of the key alone, with a seed of its own per
    field: still tied to its row, apart from every value. Every part is a non-linear
    function of the key hash (``value_hash``), so the key hash itself enters only when
    no value is mapped.
    """
    parts: list[sql.Composable] = [] if layout.fields else [key]
    for position, field in enumerate(layout.fields):
        expr, kind = _field_value(field, side)
        seed = _FIELD_SEED + position
        value = value_hash(
            expr, kind, field.compare_as, seed, "builtin", side, row_seed=key, finite=field.finite
        )
        parts.append(
            sql.SQL("coalesce({}, hashint8extended({}, {}))").format(
                value, key, sql.Literal(_NULL_SEED + position)
            )
        )
    return xor_all(parts)


def _field_value(field: FieldPlan, side: Side) -> tuple[sql.Composable, ValueKind]:
    """One mapped value as the side presents it (production: after the transform)."""
    if side == "production":
        expr = transformed(
            natural(field.source, field.production), field.production, field.transform
        )
        return expr, field.production_result
    return natural(field.target, field.sandbox), field.sandbox
