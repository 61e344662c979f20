"""One side's checksum statements: digests per segment, and the rows of chosen segments.

Both sides are hashed with the same expressions over their own columns (the
production side through the transforms' SQL equivalents), so equal rows give
equal hashes on either server.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from propagator.adapters.parameters import filter_condition
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.core.segments import ChecksumLayout, CompareAs, ValueKind
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
_COUNT_SEED = 0x5EED5000


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
    key hash once (``OFFSET 0`` keeps the planner from inlining it twice), so a
    pass restricted to some segments hashes the mapped values of those rows only.
    """

    row_hash: sql.Composable  # over the inner query's columns (the same names)
    count_hash: sql.Composable  # of a group's count(*)
    table: sql.Composable
    condition: sql.Composable
    read: sql.Composable  # the inner query's columns: key hash, then each needed column once
    hash_alias: sql.Identifier
    columns: sql.Composable
    order: sql.Composable

    def _inner(self) -> sql.Composed:
        return sql.SQL("(SELECT {read} FROM {table} WHERE {condition} OFFSET 0) AS s").format(
            read=self.read, table=self.table, condition=self.condition
        )

    def _in_segments(self, mask: int, segments: tuple[int, ...]) -> sql.Composed:
        # The segment list is a literal: a production filter may contain '%'.
        return sql.SQL("(s.{} & {}) = ANY({}::int8[])").format(
            self.hash_alias, sql.Literal(mask), sql.Literal(list(segments))
        )

    def digests(self, count: int) -> sql.Composed:
        """``(rows, packed digests)``: one 8-byte digest per segment, every segment, in order.

        A segment's digest is the XOR of its row hashes and a hash of its row
        count (an empty segment's is 0), so equal digests mean the same rows
        and the same number of them; 8 bytes a segment keep a clean table's
        first pass small whatever its size.
        """
        every = sql.SQL(
            "(SELECT n AS segment, n AS position FROM generate_series(0, {last}) AS n)"
        ).format(last=sql.Literal(count - 1))
        return self._packed_digests(every, count - 1, sql.SQL(""))

    def finer_digests(
        self, count: int, differing: tuple[int, ...], fine_count: int
    ) -> sql.Composed:
        """``(rows, packed digests)`` of the ``fine_count`` level, over ``differing`` segments only.

        Segment ``c`` of ``count`` splits into the finer segments
        ``c + k * count``; digests come in the order of ``differing``, then of
        ``k``, as ``finer_segments`` lists them. Only rows of ``differing`` have
        their values hashed.
        """
        children = fine_count // count
        wanted = sql.SQL(
            "(SELECT (c.segment + k.child * {count})::int4 AS segment, "
            "(c.position - 1) * {children} + k.child AS position "
            "FROM unnest({list}::int4[]) WITH ORDINALITY AS c (segment, position) "
            "CROSS JOIN generate_series(0, {last_child}) AS k (child))"
        ).format(
            count=sql.Literal(count),
            children=sql.Literal(children),
            list=sql.Literal(list(differing)),
            last_child=sql.Literal(children - 1),
        )
        restriction = sql.SQL(" WHERE ") + self._in_segments(count - 1, differing)
        return self._packed_digests(wanted, fine_count - 1, restriction)

    def _packed_digests(
        self, wanted: sql.Composable, mask: int, restriction: sql.Composable
    ) -> sql.Composed:
        """The row count and the digests of the segments of ``mask`` listed by ``wanted``.

        ``wanted`` is a derived table of ``(segment, position)``; the digests
        come packed, 8 bytes each, in ``position`` order.
        """
        return sql.SQL(
            "SELECT coalesce(sum(g.n), 0)::int8, "
            "string_agg(int8send(coalesce(g.d, 0)), ''::bytea ORDER BY w.position) "
            "FROM {wanted} AS w LEFT JOIN ("
            "SELECT (s.{h} & {mask})::int4 AS segment, count(*) AS n, "
            "bit_xor({row_hash}) # {count_hash} AS d FROM {inner}{restriction} GROUP BY 1"
            ") AS g USING (segment)"
        ).format(
            wanted=wanted,
            h=self.hash_alias,
            mask=sql.Literal(mask),
            row_hash=self.row_hash,
            count_hash=self.count_hash,
            inner=self._inner(),
            restriction=restriction,
        )

    def rows(self, mask: int, differing: tuple[int, ...] | None) -> sql.Composed:
        """The key-ordered rows of the ``differing`` segments of ``mask`` (None: every row)."""
        if differing is None:  # every row: no need to hash again
            every = sql.SQL("SELECT {columns} FROM {table} WHERE {condition} ORDER BY {order}")
            return every.format(
                columns=self.columns, table=self.table, condition=self.condition, order=self.order
            )
        return sql.SQL("SELECT {columns} FROM {inner} WHERE {restriction} ORDER BY {order}").format(
            columns=self.columns,
            inner=self._inner(),
            restriction=self._in_segments(mask, differing),
            order=self.order,
        )


def side_queries(
    layout: ChecksumLayout,
    table: TableInfo,
    side: Side,
    hashing: Hashing,
    where: str | None,
) -> SideQueries:
    """The statements of one side, hashing, filtering and ordering its rows."""
    production = side == "production"
    key_hashes: list[sql.Composable] = []
    for position, key in enumerate(layout.keys):
        kind = key.production if production else key.sandbox
        expr = natural(key.column, kind)
        key_hashes.append(
            value_hash(expr, kind, key.compare_as, _KEY_SEED + position, hashing, side)
        )
    key_columns = [k.column for k in layout.keys]
    value_columns = [f.source if production else f.target for f in layout.fields]
    needed = list(dict.fromkeys((*key_columns, *value_columns)))
    hash_alias = sql.Identifier(_unused_name(set(table.columns), "key_hash"))
    condition: sql.Composable = sql.SQL(" AND ").join(
        sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in key_columns
    )
    if where:
        condition = sql.SQL("{} AND ({})").format(filter_condition(where), condition)
    # The key's hash both places a row in its segment (low bits) and enters the row's hash.
    key_hash = xor_all(key_hashes)
    return SideQueries(
        row_hash=_row_hash(layout, side, hashing, hash_alias),
        count_hash=value_hash(
            sql.SQL("count(*)"), ValueKind.INTEGER, CompareAs.INT8, _COUNT_SEED, hashing, side
        ),
        table=table_identifier(table.name),
        condition=condition,
        read=sql.SQL(", ").join(
            [sql.SQL("{} AS {}").format(key_hash, hash_alias)] + [sql.Identifier(c) for c in needed]
        ),
        hash_alias=hash_alias,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in (*key_columns, *value_columns)),
        order=sql.SQL(", ").join(
            sql.SQL('{} COLLATE "C"').format(sql.Identifier(c))
            if table.column(c, "key").needs_c_collation
            else sql.Identifier(c)
            for c in key_columns
        ),
    )


def _row_hash(
    layout: ChecksumLayout, side: Side, hashing: Hashing, hash_alias: sql.Identifier
) -> sql.Composable:
    """A row's hash: its key's hash mixed with each mapped value's and which of them are NULL."""
    production = side == "production"
    value_hashes: list[sql.Composable] = []
    null_flags: list[sql.Composable] = []
    for position, field in enumerate(layout.fields):
        if production:
            expr = transformed(
                natural(field.source, field.production), field.production, field.transform
            )
            kind = field.production_result
        else:
            expr = natural(field.target, field.sandbox)
            kind = field.sandbox
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
    mixed = sql.SQL("(s.{} # {})").format(hash_alias, xor_all([flags_hash, *value_hashes]))
    return value_hash(mixed, ValueKind.INTEGER, CompareAs.INT8, _ROW_SEED, hashing, side)
