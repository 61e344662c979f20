"""Checksum reconcile: compare per-segment digests inside each server, fetch only what differs.

Each server hashes every row (keys and canonicalised mapped values, the
production side after the transforms' SQL equivalents) and returns an 8-byte
digest per segment, all packed in one value; a segment is a hash bucket of the
key, so its boundaries depend on no collation. When differences are scattered
over many segments, a finer pass does the same over the rows of the differing
ones. Only the rows of segments whose digests differ are then streamed,
key-ordered, through the same ``compare_streams``/``merge_compare`` the
streaming reconcile uses, so the plan, the report and the apply (through
``converge_keys``) are the streaming compare's, restricted to where a
difference can be. Both sides are read at once, each from one ``REPEATABLE
READ READ ONLY`` snapshot covering every pass.

Whatever the checksum cannot compare exactly (an unsupported type, a Python
callable transform, no unique key index, servers hashing differently and no
md5) makes the run fall back to the streaming compare, with the reason logged
and put in the report.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import psycopg
from psycopg import sql

from propagator.adapters.postgres import (
    TableInfo,
    filter_condition,
    prefetch,
    table_identifier,
    translate_error,
)
from propagator.core.plan import JobMappingResult
from propagator.core.report import ReconcileReport
from propagator.core.segments import (
    PYTHON_WHITESPACE,
    REFINE_ABOVE_FRACTION,
    ChecksumLayout,
    CompareAs,
    NotExpressibleError,
    SqlTransform,
    ValueKind,
    compare_digests,
    fine_segment_count,
    finer_segments,
    plan_layout,
    segment_count,
)
from propagator.errors import ConfigurationError, PermanentError
from propagator.sql import load_sql

if TYPE_CHECKING:
    from propagator.services.sync import AppliedHook, Source, SyncContext

__all__ = ["Hashing", "reconcile_checksum"]

Connection = psycopg.Connection[tuple[Any, ...]]
Side = Literal["production", "sandbox"]
Hashing = Literal["builtin", "md5"]
_T = TypeVar("_T")

_MIN_SERVER_VERSION = 140000  # hash_numeric_extended of numeric Infinity, trim_scale
_FETCH_SIZE = 10_000
_READ_ALL_FRACTION = 0.5
_REFINE_WORK_MEM = "32MB"
_KEY_SEED = 0x5EED0000
_FIELD_SEED = 0x5EED2000
_NULL_FLAGS_SEED = 0x5EED3000
_ROW_SEED = 0x5EED4000
_COUNT_SEED = 0x5EED5000
_SANDBOX_ONLY_SEED = 0x100000  # sandbox side of a pair of different families
_NEGATIVE_SEED = 0x400  # numeric: the seed of negative values, offset from the field's
_NAN_SEED = 0x800  # numeric: NaN hashes to its own seed, apart from the infinities'

_log = logging.getLogger(__name__)


def _event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """A structured event when logging is configured; a plain standard-library record otherwise.

    structlog is only looked up, not imported: importing it costs a one-shot
    ``propagator reconcile`` ~70 ms at start, and where it was never imported
    nobody configured it.
    """
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        structlog.stdlib.get_logger(__name__).log(level, event, **fields)
    else:
        _log.log(level, "%s %s", event, fields)


# --- SQL expressions -------------------------------------------------------------------------


def _natural(column: str, kind: ValueKind) -> sql.Composable:
    """A column as the driver presents it: a ``real`` is read as its shortest text, as a double."""
    ident = sql.Identifier(column)
    if kind is ValueKind.REAL:
        return sql.SQL("({}::text::float8)").format(ident)
    return ident


def _transformed(expr: sql.Composable, kind: ValueKind, op: SqlTransform) -> sql.Composable:
    whitespace = sql.Literal(PYTHON_WHITESPACE)
    if op is SqlTransform.IDENTITY:
        return expr
    if op is SqlTransform.TO_DOUBLE:
        return sql.SQL("({}::float8)").format(expr)
    if op is SqlTransform.TRUNCATE:
        return sql.SQL("trunc({})").format(_as_numeric(expr, kind))
    if op is SqlTransform.TO_TEXT:
        return sql.SQL("({}::text)").format(expr)
    if op is SqlTransform.STRIP:
        return sql.SQL("btrim({}, {})").format(expr, whitespace)
    return sql.SQL("(CASE WHEN btrim({e}, {ws}) = '' THEN NULL ELSE {e} END)").format(
        e=expr, ws=whitespace
    )


def _as_numeric(expr: sql.Composable, kind: ValueKind) -> sql.Composable:
    """The exact decimal value Python's ``canonical_number`` gives (floats via shortest text)."""
    if kind is ValueKind.NUMERIC:
        return expr
    if kind.is_float:
        return sql.SQL("({}::float8::text::numeric)").format(expr)
    return sql.SQL("({}::numeric)").format(expr)


def _canonical_text(expr: sql.Composable, kind: ValueKind, compare_as: CompareAs) -> sql.Composable:
    """Canonical text for md5 hashing: equal texts exactly when ``values_equal`` says equal."""
    if compare_as is CompareAs.INT8:
        return sql.SQL("({}::int8::text)").format(expr)
    if compare_as is CompareAs.FLOAT8:
        return sql.SQL("(CASE WHEN {e}::float8 = 0 THEN '0' ELSE {e}::float8::text END)").format(
            e=expr
        )
    if compare_as is CompareAs.NUMERIC:
        return sql.SQL("trim_scale({})::text").format(_as_numeric(expr, kind))
    if compare_as is CompareAs.DISTINCT:
        family = {"number": CompareAs.NUMERIC, "text": CompareAs.TEXT}.get(kind.family)
        inner = _canonical_text(expr, kind, family or CompareAs(kind.family))
        return sql.SQL("({} || {})").format(sql.Literal(kind.family + ":"), inner)
    return sql.SQL("({}::text)").format(expr)


def _value_hash(
    expr: sql.Composable,
    kind: ValueKind,
    compare_as: CompareAs,
    seed: int,
    hashing: Hashing,
    side: Side,
) -> sql.Composable:
    """A 64-bit hash of one canonicalised value (NULL stays NULL)."""
    if hashing == "md5":
        return sql.SQL(
            "('x' || left(md5(convert_to({prefix} || {text}, 'UTF8')), 16))::bit(64)::int8"
        ).format(prefix=sql.Literal(f"{seed}:"), text=_canonical_text(expr, kind, compare_as))
    if compare_as is CompareAs.DISTINCT:
        # Different families are never equal: each side hashes its own kind, seeds apart.
        family = {"number": CompareAs.NUMERIC}.get(kind.family) or CompareAs(kind.family)
        offset = _SANDBOX_ONLY_SEED if side == "sandbox" else 0
        return _value_hash(expr, kind, family, seed + offset, hashing, side)
    literal = sql.Literal(seed)
    if compare_as is CompareAs.INT8:
        return sql.SQL("hashint8extended({}::int8, {})").format(expr, literal)
    if compare_as is CompareAs.FLOAT8:
        return sql.SQL("hashfloat8extended({}::float8, {})").format(expr, literal)
    if compare_as is CompareAs.NUMERIC:
        # hash_numeric_extended ignores the sign (7 and -7 collide), returns its seed for
        # NaN and both infinities and seed - 1 for zero: the seed carries the sign and
        # NaN, so -Infinity, +Infinity, NaN and 0 come out as four distinct constants.
        return sql.SQL(
            "hash_numeric_extended({v}, CASE WHEN {v} < 0 THEN {negative} "
            "WHEN {v} = 'NaN' THEN {nan} ELSE {seed} END)"
        ).format(
            v=_as_numeric(expr, kind),
            seed=literal,
            negative=sql.Literal(seed + _NEGATIVE_SEED),
            nan=sql.Literal(seed + _NAN_SEED),
        )
    if compare_as is CompareAs.TEXT:
        return sql.SQL('hashtextextended({} COLLATE "C", {})').format(expr, literal)
    if compare_as is CompareAs.BOOLEAN:
        return sql.SQL("hashint8extended({}::int4::int8, {})").format(expr, literal)
    return sql.SQL("uuid_hash_extended({}, {})").format(expr, literal)


def _xor(parts: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("(") + sql.SQL(" # ").join(parts) + sql.SQL(")")


def _unused_name(taken: set[str], wanted: str) -> str:
    """``wanted``, or ``wanted_2``, ``wanted_3``… whichever no column of the table is called."""
    name, suffix = wanted, 1
    while name in taken:
        suffix += 1
        name = f"{wanted}_{suffix}"
    return name


@dataclass(frozen=True, slots=True)
class _SideQueries:
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


def _side_queries(
    layout: ChecksumLayout,
    table: TableInfo,
    side: Side,
    hashing: Hashing,
    where: str | None,
) -> _SideQueries:
    production = side == "production"
    key_hashes: list[sql.Composable] = []
    for position, key in enumerate(layout.keys):
        kind = key.production if production else key.sandbox
        expr = _natural(key.column, kind)
        key_hashes.append(
            _value_hash(expr, kind, key.compare_as, _KEY_SEED + position, hashing, side)
        )
    value_hashes: list[sql.Composable] = []
    null_flags: list[sql.Composable] = []
    for position, field in enumerate(layout.fields):
        if production:
            expr = _transformed(
                _natural(field.source, field.production), field.production, field.transform
            )
            kind = field.production_result
        else:
            expr = _natural(field.target, field.sandbox)
            kind = field.sandbox
        value = _value_hash(expr, kind, field.compare_as, _FIELD_SEED + position, hashing, side)
        value_hashes.append(sql.SQL("coalesce({}, 0)").format(value))
        null_flags.append(
            sql.SQL("(CASE WHEN {} IS NULL THEN {} ELSE 0 END)").format(
                expr, sql.Literal(1 << position)
            )
        )
    flags = sql.SQL("(") + sql.SQL(" + ").join(null_flags) + sql.SQL(")::int8")
    flags_hash = _value_hash(
        flags, ValueKind.INTEGER, CompareAs.INT8, _NULL_FLAGS_SEED, hashing, side
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
    key_hash = _xor(key_hashes)
    # Key and values are mixed through one more hash: a digest XORing ``key ^ value``
    # directly would not change when two rows of a segment exchange their values.
    mixed = sql.SQL("(s.{} # {})").format(hash_alias, _xor([flags_hash, *value_hashes]))
    row_hash = _value_hash(mixed, ValueKind.INTEGER, CompareAs.INT8, _ROW_SEED, hashing, side)
    return _SideQueries(
        row_hash=row_hash,
        count_hash=_value_hash(
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


# --- One side's snapshot ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerFacts:
    version: int
    encoding: str
    estimated_rows: float
    keys_unique: bool
    builtin_probe: list[tuple[Any, ...]] | None
    md5_probe: list[tuple[Any, ...]] | None


class _Snapshot:
    """One side read from a single ``REPEATABLE READ READ ONLY`` transaction."""

    def __init__(self, conn: Connection, table: TableInfo) -> None:
        self.conn = conn
        self.table = table
        self.side: Side = table.side

    def begin(self, key_columns: tuple[str, ...]) -> _ServerFacts:
        conn = self.conn
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL extra_float_digits = 1")
            facts = conn.execute(
                load_sql("checksum/server_facts.sql"),
                {
                    "table": table_identifier(self.table.name).as_string(conn),
                    "keys": list(key_columns),
                },
            ).fetchone()
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"inspecting {self.table.name}") from None
        if facts is None:
            raise PermanentError(f"the {self.side} table {self.table.name} disappeared")
        return _ServerFacts(
            int(facts[0]),
            str(facts[1]),
            float(facts[2]),
            bool(facts[3]),
            self._probe("checksum/hash_probe.sql"),
            self._probe("checksum/md5_probe.sql"),
        )

    def _probe(self, name: str) -> list[tuple[Any, ...]] | None:
        """The probe's rows, or None when this server cannot run it (in a savepoint)."""
        try:
            with self.conn.transaction():
                return self.conn.execute(load_sql(name)).fetchall()
        except psycopg.Error:
            return None

    def digests(self, query: sql.Composed) -> tuple[int, bytes]:
        try:
            # The planner cannot know a masked hash has few distinct values and may
            # sort the whole table to group it; the hash aggregate needs a few MB.
            self.conn.execute("SET LOCAL enable_sort = off")
            with self.conn.cursor(binary=True) as cursor:
                found = cursor.execute(query).fetchone()
            self.conn.execute("SET LOCAL enable_sort = on")
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"checksumming {self.table.name}") from None
        if found is None:
            raise PermanentError(f"checksumming {self.table.name} returned nothing")
        return int(found[0]), bytes(found[1] or b"")

    def allow_fine_pass_memory(self) -> None:
        """Raise this transaction's work_mem (never lower it): the finer pass's hash table fits."""
        try:
            self.conn.execute(
                "SELECT set_config('work_mem', %s, true) "
                "WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(%s)",
                (_REFINE_WORK_MEM, _REFINE_WORK_MEM),
            )
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"checksumming {self.table.name}") from None

    def rows(self, query: sql.Composed) -> Iterator[tuple[Any, ...]]:
        try:
            with self.conn.cursor(name=f"propagator_checksum_{self.side}") as cursor:
                cursor.itersize = _FETCH_SIZE
                cursor.execute(query)
                while batch := cursor.fetchmany(_FETCH_SIZE):
                    yield from batch
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"reading {self.table.name}") from None

    def end(self) -> None:
        if not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()


# --- The reconcile ---------------------------------------------------------------------------


def _why_not(
    production: _ServerFacts,
    sandbox: _ServerFacts,
    layout: ChecksumLayout,
    wanted: Hashing | None,
) -> tuple[Hashing | None, str | None]:
    """The hashing both servers agree on, or the reason the checksum cannot run."""
    for side, facts in (("production", production), ("sandbox", sandbox)):
        if facts.version < _MIN_SERVER_VERSION:
            return None, f"the {side} server is older than PostgreSQL 14"
        if not facts.keys_unique:
            return None, (
                f"no unique index covers the key columns of the {side} table, "
                "so duplicate keys could hide in a checksum"
            )
    if layout.uses_whitespace and production.encoding != "UTF8":
        return None, "strip/blank_to_null need a UTF8 production database for their SQL form"
    builtin = production.builtin_probe is not None
    if builtin and production.builtin_probe == sandbox.builtin_probe and wanted != "md5":
        return "builtin", None
    md5 = production.md5_probe is not None and production.md5_probe == sandbox.md5_probe
    if md5 and wanted != "builtin":
        return "md5", None
    return None, "the servers compute different hashes and canonical forms"


def _fall_back(report: ReconcileReport, reason: str, strict: bool) -> bool:
    if strict:
        raise ConfigurationError(f"reconcile_method=checksum cannot be used: {reason}")
    report.method = "stream"
    report.fallback_reason = reason
    _event("reconcile_fallback", method="stream", reason=reason)
    return False


def reconcile_checksum(
    context: SyncContext,
    open_connection: Callable[[Side], Connection],
    report: ReconcileReport,
    *,
    apply: bool,
    source: Source = "reconcile",
    on_applied: AppliedHook | None = None,
    progress: Callable[[int], None] | None = None,
    on_difference: Callable[[JobMappingResult], None] | None = None,
    strict: bool = False,
    segments: int | None = None,
    hashing: Hashing | None = None,
    fine_segments: int | None = None,
    refine_above: float = REFINE_ABOVE_FRACTION,
) -> bool:
    """Run the checksum reconcile into ``report``; False when it does not apply (nothing done).

    Arguments mean what they mean for ``services.sync.reconcile``. ``strict``
    turns "does not apply" into a ``ConfigurationError``; ``segments`` (a power
    of two) overrides the sizing. On False the report carries
    ``fallback_reason`` and the caller streams instead. ``hashing`` forces
    "md5" (or "builtin") where both servers support it, for tests and benchmarks.

    When the differing segments hold more than ``refine_above`` of all rows
    (scattered differences touch most coarse segments), a second pass groups
    just their rows into ``fine_segments`` (a power of two, sized from the
    table by default) so only the rows of differing fine segments are fetched.
    """
    started = time.perf_counter()
    spec = context.spec
    try:
        layout = plan_layout(
            spec,
            {n: c.type_sql for n, c in context.production.columns.items()},
            {n: c.type_sql for n, c in context.sandbox.columns.items()},
        )
    except NotExpressibleError as error:
        return _fall_back(report, str(error), strict)

    production = _Snapshot(open_connection("production"), context.production)
    sandbox = _Snapshot(open_connection("sandbox"), context.sandbox)
    try:
        production_facts = production.begin(spec.key_columns)
        sandbox_facts = sandbox.begin(spec.key_columns)
        agreed, reason = _why_not(production_facts, sandbox_facts, layout, hashing)
        if agreed is None:
            assert reason is not None
            return _fall_back(report, reason, strict)
        hashing = agreed
        estimated_rows = max(production_facts.estimated_rows, sandbox_facts.estimated_rows)
        count = segments or segment_count(estimated_rows)
        fine_count = fine_segments or fine_segment_count(estimated_rows, count)
        if count & (count - 1) or fine_count & (fine_count - 1) or fine_count > 1 << 30:
            raise ValueError("segment counts must be powers of two (segments are int4)")
        queries = {
            snapshot.side: _side_queries(
                layout,
                snapshot.table,
                snapshot.side,
                hashing,
                context.production_filter if snapshot.side == "production" else None,
            )
            for snapshot in (production, sandbox)
        }
        report.method = "checksum"
        report.fallback_reason = None
        report.started_at = report.started_at or datetime.now(UTC)
        (production_rows, production_digests), (sandbox_rows, sandbox_digests) = _both(
            production,
            sandbox,
            lambda snapshot: snapshot.digests(queries[snapshot.side].digests(count)),
        )
        differing = _differing(production_digests, sandbox_digests)
        _event(
            "reconcile_segments_compared",
            hashing=hashing,
            segments=count,
            differing_segments=len(differing),
            production_rows=production_rows,
            sandbox_rows=sandbox_rows,
        )
        if progress is not None:
            progress(production_rows)
        wanted: tuple[int, ...] | None = differing
        mask = count - 1
        # Rows are spread evenly over segments (they are hash buckets).
        differing_share = len(differing) / count
        if differing and fine_count > count and differing_share > refine_above:
            wanted = _refine(production, sandbox, queries, differing, count, fine_count)
            mask = fine_count - 1
            differing_share = len(wanted) / fine_count
        if wanted and differing_share > _READ_ALL_FRACTION:
            # Most rows are in differing segments: reading them all is cheaper than
            # hashing every row again to pick them out.
            wanted = None
        _compare_differing(
            context,
            open_connection,
            report,
            (production_rows, sandbox_rows),
            production,
            sandbox,
            queries,
            wanted,
            mask,
            apply=apply,
            source=source,
            on_applied=on_applied,
            on_difference=on_difference,
        )
    finally:
        production.end()
        sandbox.end()
    report.statistics.duration_seconds = time.perf_counter() - started
    return True


def _both(
    production: _Snapshot, sandbox: _Snapshot, run: Callable[[_Snapshot], _T]
) -> tuple[_T, _T]:
    """One pass on both servers at once."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="propagator-checksum") as pool:
        production_future = pool.submit(run, production)
        sandbox_future = pool.submit(run, sandbox)
        return production_future.result(), sandbox_future.result()


def _differing(production: bytes, sandbox: bytes) -> tuple[int, ...]:
    """``compare_digests``, its refusal of a malformed pass as the reconcile's error."""
    try:
        return compare_digests(production, sandbox)
    except ValueError as error:
        raise PermanentError(
            f"checksum reconcile: {error}; set PROPAGATOR_RECONCILE_METHOD=stream"
        ) from None


def _refine(
    production: _Snapshot,
    sandbox: _Snapshot,
    queries: dict[Side, _SideQueries],
    differing: tuple[int, ...],
    count: int,
    fine_count: int,
) -> tuple[int, ...]:
    """The differing segments of a second, finer pass over the rows of ``differing`` only."""
    for snapshot in (production, sandbox):
        snapshot.allow_fine_pass_memory()
    (production_rows, production_digests), (sandbox_rows, sandbox_digests) = _both(
        production,
        sandbox,
        lambda snapshot: snapshot.digests(
            queries[snapshot.side].finer_digests(count, differing, fine_count)
        ),
    )
    positions = _differing(production_digests, sandbox_digests)
    fine = finer_segments(differing, count, fine_count, positions)
    _event(
        "reconcile_segments_refined",
        segments=fine_count,
        differing_segments=len(fine),
        production_rows=production_rows,
        sandbox_rows=sandbox_rows,
    )
    return fine


def _compare_differing(
    context: SyncContext,
    open_connection: Callable[[Side], Connection],
    report: ReconcileReport,
    totals: tuple[int, int],
    production: _Snapshot,
    sandbox: _Snapshot,
    queries: dict[Side, _SideQueries],
    wanted: tuple[int, ...] | None,
    mask: int,
    *,
    apply: bool,
    source: Source,
    on_applied: AppliedHook | None,
    on_difference: Callable[[JobMappingResult], None] | None,
) -> None:
    """Stream the ``wanted`` segments (None: every row) through ``merge_compare``; converge.

    The rows not read are in segments equal on both sides: matched, unchanged,
    and as many on each side, which is checked against the first pass's totals.
    """
    from propagator.services.sync import (  # sync dispatches here
        compare_streams,
        converge_differences,
    )

    stats = report.statistics
    if wanted is None or wanted:
        production_rows = prefetch(production.rows(queries["production"].rows(mask, wanted)))
        sandbox_rows = prefetch(sandbox.rows(queries["sandbox"].rows(mask, wanted)))
        converge_differences(
            context,
            compare_streams(context, production_rows, sandbox_rows, stats, None),
            report,
            open_connection if apply else None,
            source=source,
            on_applied=on_applied,
            on_difference=on_difference,
        )
    equal_rows = totals[0] - stats.production_rows
    if equal_rows < 0 or equal_rows != totals[1] - stats.sandbox_rows:
        raise PermanentError(
            "checksum reconcile read rows that do not add up to what it summarised "
            f"({stats.production_rows}/{stats.sandbox_rows} read of "
            f"{totals[0]}/{totals[1]}, the rest in equal segments); "
            "set PROPAGATOR_RECONCILE_METHOD=stream"
        )
    stats.production_rows += equal_rows
    stats.sandbox_rows += equal_rows
    stats.matched += equal_rows
