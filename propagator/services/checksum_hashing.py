"""SQL that hashes one canonicalised value, the same way on both servers.

Values that ``values_equal`` calls equal hash alike: each is first brought to
the canonical form of how it compares (an integer, a double, an exact decimal,
text in the C collation…), then hashed with a seed that keeps fields and
sides apart. ``md5`` hashing over canonical text is the
portable alternative for servers whose built-in hash functions differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from psycopg import sql

from propagator.core.segments import PYTHON_WHITESPACE, CompareAs, SqlTransform, ValueKind
from propagator.errors import Side

__all__ = ["Hashing", "natural", "transformed", "value_hash", "xor_all"]

Hashing = Literal["builtin", "md5"]

_SANDBOX_ONLY_SEED = 0x100000  # sandbox side of a pair of different families
_NEGATIVE_SEED = 0x400  # numeric: the seed of negative values, offset from the field's
_ZERO_SEED = 0xC00  # numeric: zero's seed (its hash is that seed - 1)
_NAN_SEED = 0x800  # numeric: NaN hashes to its own seed, apart from the infinities'


def natural(column: str, kind: ValueKind) -> sql.Composable:
    """A column as the driver presents it: a ``real`` is read as its shortest text, as a double."""
    ident = sql.Identifier(column)
    if kind is ValueKind.REAL:
        return sql.SQL("({}::text::float8)").format(ident)
    return ident


def transformed(expr: sql.Composable, kind: ValueKind, op: SqlTransform) -> sql.Composable:
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


def value_hash(
    expr: sql.Composable,
    kind: ValueKind,
    compare_as: CompareAs,
    seed: int,
    hashing: Hashing,
    side: Side,
    row_seed: sql.Composable | None = None,
    *,
    finite: bool = False,
) -> sql.Composable:
    """A 64-bit hash of one canonicalised value (NULL stays NULL).

    ``row_seed`` (built-in hashing only) is an int8 expression every seed is made
    from, so the same value hashes differently in each row it is given for (its
    key's hash). ``finite``: neither side can hold an infinity, so NaN needs no
    seed apart from the positive numbers' (one numeric comparison a row fewer).
    """
    if hashing == "md5":
        return sql.SQL(
            "('x' || left(md5(convert_to({prefix} || {text}, 'UTF8')), 16))::bit(64)::int8"
        ).format(prefix=sql.Literal(f"{seed}:"), text=_canonical_text(expr, kind, compare_as))
    if compare_as is CompareAs.DISTINCT:
        # Different families are never equal: each side hashes its own kind, seeds apart.
        family = {"number": CompareAs.NUMERIC}.get(kind.family) or CompareAs(kind.family)
        offset = _SANDBOX_ONLY_SEED if side == "sandbox" else 0
        return value_hash(expr, kind, family, seed + offset, hashing, side, row_seed, finite=finite)

    def seeded(value: int) -> sql.Composable:
        if row_seed is None:
            return sql.Literal(value)
        return sql.SQL("({} # {})").format(row_seed, sql.Literal(value))

    def mixed(value: int) -> sql.Composable:
        # Hashing a double gives back its seed for zero, a numeric its seed for NaN and
        # the infinities and seed - 1 for zero. With the row's hash XORed into that
        # seed, such a value's hash would be linear in its key and rows of a segment
        # could cancel out; a seed hashed from the row's (one call a row) is not.
        if row_seed is None:
            return sql.Literal(value)
        return sql.SQL("hashint8extended({}, {})").format(row_seed, sql.Literal(value))

    literal = seeded(seed)
    if compare_as is CompareAs.INT8:
        return sql.SQL("hashint8extended({}::int8, {})").format(expr, literal)
    if compare_as is CompareAs.FLOAT8:
        return sql.SQL("hashfloat8extended({}::float8, {})").format(expr, mixed(seed))
    if compare_as is CompareAs.NUMERIC:
        return _numeric_hash(_as_numeric(expr, kind), mixed, seed, finite)
    if compare_as is CompareAs.TEXT:
        return sql.SQL('hashtextextended({} COLLATE "C", {})').format(expr, literal)
    if compare_as is CompareAs.BOOLEAN:
        return sql.SQL("hashint8extended({}::int4::int8, {})").format(expr, literal)
    return sql.SQL("uuid_hash_extended({}, {})").format(expr, literal)


def _numeric_hash(
    value: sql.Composable, seeded: Callable[[int], sql.Composable], seed: int, finite: bool
) -> sql.Composable:
    """hash_numeric_extended with the sign, zero (and NaN, unless ``finite``) in the seed.

    hash_numeric_extended ignores the sign (7 and -7 collide), returns its seed for
    NaN and both infinities and seed - 1 for zero. So negative values, positive
    ones (with NaN, which sorts above every number), zero and, where a side can
    hold an infinity, NaN apart from +Infinity each take a seed of their own:
    -Infinity, +Infinity, NaN and 0 come out as four unrelated values. Zero has a
    seed of its own, or seed - 1 and seed would differ in a few low bits only.
    """
    positive = seeded(seed)
    if not finite:
        positive = sql.SQL("CASE WHEN {v} = 'NaN' THEN {nan} ELSE {positive} END").format(
            v=value, nan=seeded(seed + _NAN_SEED), positive=positive
        )
    return sql.SQL(
        "hash_numeric_extended({v}, CASE WHEN {v} < 0 THEN {negative} "
        "WHEN {v} > 0 THEN {positive} ELSE {zero} END)"
    ).format(
        v=value,
        negative=seeded(seed + _NEGATIVE_SEED),
        positive=positive,
        zero=seeded(seed + _ZERO_SEED),
    )


def xor_all(parts: list[sql.Composable]) -> sql.Composable:
    """The XOR of 64-bit hashes (``#`` in SQL)."""
    return sql.SQL("(") + sql.SQL(" # ").join(parts) + sql.SQL(")")
