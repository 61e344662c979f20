"""Checksum segments: how each key and mapped value is compared inside the servers.

The checksum reconcile hashes rows where they live and fetches only the
segments whose digests differ. It is exactly as correct as the streaming
compare only if both servers reduce two values to the same hash precisely
when ``values_equal`` would call the Python values equal. This module decides,
without any I/O, how every key and field pair is compared (or says why it
cannot be, so the caller falls back to streaming) and how many segments a
table is cut into; ``core.digests`` compares what the servers return.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from propagator.core.mapping import MappingSpec
from propagator.core.transforms import NamedTransform

__all__ = [
    "HASHED_ROWS_MAX",
    "MAX_FINE_SEGMENTS",
    "MAX_SEGMENTS",
    "PYTHON_WHITESPACE",
    "REFINE_ABOVE_FRACTION",
    "SPARSE_SEGMENTS",
    "ChecksumLayout",
    "CompareAs",
    "FieldPlan",
    "KeyPlan",
    "NotExpressibleError",
    "SqlTransform",
    "ValueKind",
    "fine_segment_count",
    "plan_layout",
    "sample_percent",
    "segment_count",
    "segments_for_sample",
    "value_kind",
]

# The first pass sends 8 bytes a segment: a clean table costs 256 kB per server at most.
# 2^15 against 2^14 segments on 1M rows (both servers read at once): 1%-scattered
# differences ~7% faster (half as many rows in differing segments), a clean table ~4% slower.
MAX_SEGMENTS = 1 << 15
_MIN_SEGMENTS = 64
_ROWS_PER_SEGMENT = 16
# The second, finer pass groups in one server hash table of ~110 bytes a segment:
# 2^18 segments stay within the 32 MB work_mem the pass sets for itself.
MAX_FINE_SEGMENTS = 1 << 18
_ROWS_PER_FINE_SEGMENT = 4
# A finer pass is one more hashing scan of the whole table on each server; it pays
# when fetching, sorting and comparing the rows it would spare costs more, which
# (measured: ~0.5 us of server time a scanned row, ~3 us a fetched row) is when
# the differing coarse segments hold more than about a sixth of the rows.
REFINE_ABOVE_FRACTION = 0.15
# Up to this many rows in differing segments, each side sends a 16-byte record (key
# hash, row hash) and a 6-byte ctid per row of them instead of a finer pass, and only
# the rows not equal on the other side are read: at most ~11 MB a side, held as
# arrays (~35 MiB in all) for the moment they are compared.
HASHED_ROWS_MAX = 500_000
# A server groups 1M rows into 2^13 segments for ~75% of what 2^15 costs (its hash
# table stays in the CPU's caches); where a sample of the rows says few differ, the
# segmented pass uses that many, and the rows of the few differing segments are
# picked by their hashes as before.
SPARSE_SEGMENTS = 1 << 13
_SAMPLED_ROWS = 1000

# Every character ``str.isspace()`` accepts, which is what ``str.strip()`` removes
# (a unit test recomputes it over all of Unicode).
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


class NotExpressibleError(ValueError):
    """The mapping cannot be compared by checksum; the message says why (for the report)."""


class ValueKind(enum.Enum):
    """What a column holds, as far as comparing values is concerned."""

    INTEGER = "integer"
    NUMERIC = "numeric"
    DOUBLE = "double precision"
    REAL = "real"
    TEXT = "text"
    BOOLEAN = "boolean"
    UUID = "uuid"

    @property
    def family(self) -> str:
        """Values of different families are never equal (``values_equal`` says so too)."""
        if self in (ValueKind.INTEGER, ValueKind.NUMERIC, ValueKind.DOUBLE, ValueKind.REAL):
            return "number"
        return str(self.value)

    @property
    def is_float(self) -> bool:
        return self in (ValueKind.DOUBLE, ValueKind.REAL)


_TYPE_KINDS = {
    "smallint": ValueKind.INTEGER,
    "integer": ValueKind.INTEGER,
    "bigint": ValueKind.INTEGER,
    "numeric": ValueKind.NUMERIC,
    "double precision": ValueKind.DOUBLE,
    "real": ValueKind.REAL,
    "text": ValueKind.TEXT,
    "character varying": ValueKind.TEXT,
    "boolean": ValueKind.BOOLEAN,
    "uuid": ValueKind.UUID,
}


def value_kind(type_sql: str) -> ValueKind | None:
    """The kind of a column from its ``format_type`` text, or None when unsupported.

    ``character(n)`` is left out on purpose: its text form drops the padding
    the driver keeps, so the two compares would disagree.
    """
    if type_sql.endswith("]"):
        return None
    base = type_sql.split("(", 1)[0].strip()
    return _TYPE_KINDS.get(base)


class CompareAs(enum.Enum):
    """The one canonical form both servers hash a key or field pair in."""

    INT8 = "int8"  # integers on both sides
    FLOAT8 = "float8"  # floating point on both sides (-0 = 0, NaN = NaN)
    NUMERIC = "numeric"  # any other mix of numbers: exact decimal value, scale ignored
    TEXT = "text"
    BOOLEAN = "boolean"
    UUID = "uuid"
    DISTINCT = "distinct"  # different families: equal only when both are NULL


def _compare_as(production: ValueKind, sandbox: ValueKind) -> CompareAs:
    if production.family != sandbox.family:
        return CompareAs.DISTINCT
    if production.family == "number":
        if production is ValueKind.INTEGER and sandbox is ValueKind.INTEGER:
            return CompareAs.INT8
        if production.is_float and sandbox.is_float:
            return CompareAs.FLOAT8
        return CompareAs.NUMERIC
    return CompareAs(production.family)


class SqlTransform(enum.Enum):
    """The SQL equivalent of a named transform, applied to the production value."""

    IDENTITY = "identity"
    TO_DOUBLE = "to_double"  # float(x) of a number
    TRUNCATE = "truncate"  # int(x) of a number: toward zero
    TO_TEXT = "to_text"  # str(x) of an integer or a uuid
    STRIP = "strip"  # str.strip(): every Unicode white space character
    BLANK_TO_NULL = "blank_to_null"


def _sql_transform(name: str, source: ValueKind) -> tuple[SqlTransform, ValueKind]:
    """The SQL form of named transform ``name`` on a ``source`` column, and its result kind."""
    number = source.family == "number"
    if name == "float" and number:
        return SqlTransform.TO_DOUBLE, ValueKind.DOUBLE
    if name == "int" and number:
        if source is ValueKind.INTEGER:
            return SqlTransform.IDENTITY, source
        return SqlTransform.TRUNCATE, ValueKind.NUMERIC
    if name == "decimal" and number:
        # Decimal(str(x)) keeps the value: the canonical number form is unchanged.
        return SqlTransform.IDENTITY, source
    if name == "text":
        if source is ValueKind.TEXT:
            return SqlTransform.IDENTITY, source
        if source in (ValueKind.INTEGER, ValueKind.UUID):
            return SqlTransform.TO_TEXT, ValueKind.TEXT
    if name in ("strip", "blank_to_null", "upper", "lower") and source is not ValueKind.TEXT:
        return SqlTransform.IDENTITY, source  # these leave anything but text unchanged
    if name == "strip":
        return SqlTransform.STRIP, ValueKind.TEXT
    if name == "blank_to_null":
        return SqlTransform.BLANK_TO_NULL, ValueKind.TEXT
    raise NotExpressibleError(
        f"transform {name!r} on a {source.value} column has no exact SQL equivalent"
    )


@dataclass(frozen=True, slots=True)
class KeyPlan:
    column: str
    production: ValueKind
    sandbox: ValueKind
    compare_as: CompareAs
    finite: bool = False  # neither side can hold an infinity: NaN needs no test of its own


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One field mapping as the servers compare it."""

    source: str
    target: str
    production: ValueKind  # the source column's kind
    transform: SqlTransform
    production_result: ValueKind  # the kind after the transform
    sandbox: ValueKind
    compare_as: CompareAs
    finite: bool = False  # neither side can hold an infinity: NaN needs no test of its own


@dataclass(frozen=True, slots=True)
class ChecksumLayout:
    keys: tuple[KeyPlan, ...]
    fields: tuple[FieldPlan, ...]

    @property
    def uses_float_text(self) -> bool:
        """A float is read through its shortest text form (needs ``extra_float_digits = 1``)."""
        kinds = [(k.production, k.sandbox) for k in self.keys]
        kinds += [(f.production, f.sandbox) for f in self.fields]
        return any(kind.is_float for pair in kinds for kind in pair)

    @property
    def uses_whitespace(self) -> bool:
        return any(
            f.transform in (SqlTransform.STRIP, SqlTransform.BLANK_TO_NULL) for f in self.fields
        )


_MAX_FIELDS = 62  # the NULL flags of all fields fit one bigint


def _kind(types: Mapping[str, str], column: str, side: str) -> ValueKind:
    type_sql = types[column]
    kind = value_kind(type_sql)
    if kind is None:
        raise NotExpressibleError(
            f"{side} column {column!r} has type {type_sql}, which has no checksum form"
        )
    return kind


def _finite(type_sql: str, kind: ValueKind) -> bool:
    """Whether a column of this type never holds an infinity.

    Integers never do, nor does a ``numeric`` with a precision: PostgreSQL refuses
    to store an infinity in ``numeric(p, s)`` (only NaN is allowed there).
    """
    return kind is ValueKind.INTEGER or (kind is ValueKind.NUMERIC and "(" in type_sql)


def plan_layout(
    spec: MappingSpec, production_types: Mapping[str, str], sandbox_types: Mapping[str, str]
) -> ChecksumLayout:
    """How every key and field is compared, or ``NotExpressibleError`` saying why not."""
    if len(spec.field_mappings) > _MAX_FIELDS:
        raise NotExpressibleError(f"more than {_MAX_FIELDS} field mappings")
    keys: list[KeyPlan] = []
    for column in spec.key_columns:
        production = _kind(production_types, column, "production")
        sandbox = _kind(sandbox_types, column, "sandbox")
        compare_as = _compare_as(production, sandbox)
        # Keys are matched with Python's ==, which compares a float and a Decimal
        # exactly; only these pairs agree with the canonical forms.
        floats = production.is_float or sandbox.is_float
        if compare_as is CompareAs.DISTINCT or (floats and compare_as is not CompareAs.FLOAT8):
            raise NotExpressibleError(
                f"key column {column!r} is {production.value} in production but "
                f"{sandbox.value} in the sandbox"
            )
        finite = _finite(production_types[column], production) and _finite(
            sandbox_types[column], sandbox
        )
        keys.append(KeyPlan(column, production, sandbox, compare_as, finite))
    fields: list[FieldPlan] = []
    for mapping in spec.field_mappings:
        production = _kind(production_types, mapping.source, "production")
        sandbox = _kind(sandbox_types, mapping.target, "sandbox")
        if mapping.transform is None:
            transform, result = SqlTransform.IDENTITY, production
        elif isinstance(mapping.transform, NamedTransform):
            transform, result = _sql_transform(mapping.transform.name, production)
        else:
            raise NotExpressibleError(
                f"field {mapping.target!r} uses a Python callable transform "
                f"({mapping.transform_name}), which cannot run inside the database"
            )
        fields.append(
            FieldPlan(
                mapping.source,
                mapping.target,
                production,
                transform,
                result,
                sandbox,
                _compare_as(result, sandbox),
                # Truncating keeps a value finite; a double may overflow to an infinity.
                transform in (SqlTransform.IDENTITY, SqlTransform.TRUNCATE)
                and _finite(production_types[mapping.source], production)
                and _finite(sandbox_types[mapping.target], sandbox),
            )
        )
    return ChecksumLayout(tuple(keys), tuple(fields))


def segment_count(estimated_rows: float) -> int:
    """Segments for a table of about ``estimated_rows`` rows: a power of two, capped.

    Small segments make the targeted fetch small; the cap keeps the summary of
    a clean table small (8 bytes a segment cross the network).
    """
    if not estimated_rows or estimated_rows < 0 or math.isnan(estimated_rows):
        return MAX_SEGMENTS
    wanted = max(_MIN_SEGMENTS, math.ceil(estimated_rows / _ROWS_PER_SEGMENT))
    return min(MAX_SEGMENTS, 1 << (wanted - 1).bit_length())


def fine_segment_count(estimated_rows: float, coarse: int) -> int:
    """Segments of the finer pass: a power of two, about 4 rows each, finer than ``coarse``."""
    if not estimated_rows or estimated_rows < 0 or math.isnan(estimated_rows):
        return max(coarse, MAX_FINE_SEGMENTS)
    wanted = max(1, math.ceil(estimated_rows / _ROWS_PER_FINE_SEGMENT))
    return max(coarse, min(MAX_FINE_SEGMENTS, 1 << (wanted - 1).bit_length()))


def sample_percent(estimated_rows: float) -> float:
    """The share of a table's blocks (``TABLESAMPLE SYSTEM``) holding about 1,000 rows."""
    if not estimated_rows or estimated_rows < 0 or math.isnan(estimated_rows):
        return 100.0
    return min(100.0, 100.0 * _SAMPLED_ROWS / estimated_rows)


def segments_for_sample(count: int, sparse: int, rows: int, sampled: int, differing: int) -> int:
    """``sparse`` segments instead of ``count`` when ``differing`` rows of ``sampled`` say few
    of the table's ``rows`` differ: with one more than seen, at most a quarter of ``sparse``.

    Only the cost depends on it: the passes after the segmented one find every
    difference, however many segments hold them.
    """
    if sampled <= 0 or count <= sparse:
        return count
    return sparse if (differing + 1) * rows <= sampled * (sparse // 4) else count
