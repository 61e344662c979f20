"""Whether a production value, after its transform, can be stored in the sandbox column.

Decided from the two columns' declared types (``format_type`` text) and the
mapping's transform: the same family or a widening ``FITS``; a narrowing
(``numeric(12,2)`` into ``numeric(6,2)``, text into ``varchar(3)``, ``bigint``
into ``integer``) ``NARROWS`` and each value is checked with ``fits``; a pair
no value can cross (text into numeric, a timestamp into integer) is
``IMPOSSIBLE``; a type this module does not know is ``UNCHECKED``, never
called a pass. Values reach the sandbox as their text form cast to the column
type, so the rules follow PostgreSQL's input functions: ``'5.00'`` is not an
integer, and a varchar(n) keeps a longer string whose excess is only spaces.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

__all__ = [
    "ColumnType",
    "Family",
    "FitCheck",
    "TypeDecision",
    "Verdict",
    "decide",
    "fits",
    "parse_type",
]


class Family(enum.Enum):
    INTEGER = "integer"
    NUMERIC = "numeric"
    FLOAT = "float"
    TEXT = "text"
    DATETIME = "date/time"
    BOOLEAN = "boolean"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column type as far as storing values in it goes.

    ``size`` is the bits of an integer or float (None: a Python int, unbounded),
    the precision of a numeric or the length of a string (None: unlimited).
    """

    sql: str
    family: Family
    name: str = ""
    size: int | None = None
    scale: int = 0

    @property
    def bounded(self) -> bool:
        return self.family in (Family.INTEGER, Family.NUMERIC, Family.TEXT) and (
            self.size is not None
        )


class Verdict(enum.Enum):
    FITS = "fits"
    NARROWS = "narrows"
    IMPOSSIBLE = "impossible"
    UNCHECKED = "not checked"


@dataclass(frozen=True, slots=True)
class TypeDecision:
    """The verdict for one mapping; ``reason`` says why, and for an impossible pair the fix."""

    verdict: Verdict
    value: ColumnType | None  # the production type after the transform (None: unknown)
    target: ColumnType
    reason: str = ""

    def check(self) -> FitCheck | None:
        """The per-value predicate to run while planning, or None when no value can misfit."""
        if self.verdict is Verdict.NARROWS or (
            self.verdict is Verdict.UNCHECKED and self.target.bounded
        ):
            return FitCheck(self.target)
        return None


@dataclass(frozen=True, slots=True)
class FitCheck:
    """``fits`` for one sandbox column, called with each new value while planning."""

    target: ColumnType

    def __call__(self, value: Any) -> bool:
        return fits(value, self.target)


_INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
_INTEGER_DIGITS = {16: 5, 32: 10, 64: 19, None: 1000}
_FLOAT_BITS = {"real": 32, "double precision": 64}
_UNLIMITED_TEXT = {"text", "character varying", "bpchar", "citext", "name", '"char"'}
_DATETIME = re.compile(r"^(timestamp|time)(?:\(\d+\))? (with|without) time zone$")
_SIZED = re.compile(r"^(numeric|character varying|character)\((\d+)(?:,(-?\d+))?\)$")


def parse_type(type_sql: str) -> ColumnType:
    """The storage rules of a ``format_type`` text; anything unknown is ``Family.OTHER``."""
    text = type_sql.strip()
    if text in _INTEGER_BITS:
        return ColumnType(text, Family.INTEGER, text, _INTEGER_BITS[text])
    if text in _FLOAT_BITS:
        return ColumnType(text, Family.FLOAT, text, _FLOAT_BITS[text])
    if text == "numeric":
        return ColumnType(text, Family.NUMERIC, text)
    if text in _UNLIMITED_TEXT:
        return ColumnType(text, Family.TEXT, text)
    if text == "boolean":
        return ColumnType(text, Family.BOOLEAN, text)
    if text == "date":
        return ColumnType(text, Family.DATETIME, text)
    if match := _DATETIME.match(text):
        zone = "tz" if match.group(2) == "with" else ""
        return ColumnType(text, Family.DATETIME, match.group(1) + zone)
    if match := _SIZED.match(text):
        base, size, scale = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if base == "numeric":
            if scale < 0 or scale > size:  # PostgreSQL 15's negative scales: not modelled
                return ColumnType(text, Family.OTHER, text)
            return ColumnType(text, Family.NUMERIC, base, size, scale)
        return ColumnType(text, Family.TEXT, base, size)
    return ColumnType(text, Family.OTHER, text)


_UNBOUNDED_INT = ColumnType("integer value", Family.INTEGER, "int")
_DOUBLE = ColumnType("double precision", Family.FLOAT, "double precision", 64)
_DECIMAL = ColumnType("numeric", Family.NUMERIC, "numeric")
_TEXT = ColumnType("text", Family.TEXT, "text")
_NUMBERS = (Family.INTEGER, Family.NUMERIC, Family.FLOAT)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMERIC_TEXT = re.compile(
    r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|(?i:[+-]?(nan|infinity|inf))", re.ASCII
)


def _after_transform(source: ColumnType, transform: str | None) -> ColumnType | None:
    """The type of the values a named transform yields (None: unknown or impossible)."""
    if transform is None or transform in ("strip", "upper", "lower", "blank_to_null"):
        return source  # the text transforms leave anything but text unchanged
    if transform == "text":
        # The text of a number, a time or a boolean reads back as the same value.
        keeps = (*_NUMBERS, Family.DATETIME, Family.BOOLEAN)
        return source if source.family in keeps else _TEXT
    if source.family not in (*_NUMBERS, Family.TEXT):
        return None
    if transform == "float":
        return _DOUBLE
    if transform == "int":
        if source.family is Family.NUMERIC and source.size is not None:
            digits = source.size - source.scale  # truncated toward zero: no more digits
            return ColumnType(f"numeric({digits},0)", Family.NUMERIC, "numeric", digits)
        return source if source.family is Family.INTEGER else _UNBOUNDED_INT
    if transform == "decimal":
        return source if source.family is not Family.TEXT else _DECIMAL
    return None


def decide(source: ColumnType, target: ColumnType, transform: str | None) -> TypeDecision:
    """Whether values of ``source`` after ``transform`` can be stored in ``target``.

    ``transform`` is a named transform, None for none, or ``"()"`` for a callable.
    """
    if transform == "()":
        why = "the transform is a function; values are checked one by one when planning"
        return TypeDecision(Verdict.UNCHECKED, None, target, why)
    value = _after_transform(source, transform)
    if value is None:
        fix = f"transform {transform} cannot convert {source.sql} values; map another column"
        return TypeDecision(Verdict.IMPOSSIBLE, None, target, fix)
    verdict, reason = _compare(value, target)
    return TypeDecision(verdict, value, target, reason)


def _compare(value: ColumnType, target: ColumnType) -> tuple[Verdict, str]:
    if target.family is Family.TEXT:  # every type has a text form, assignable to text
        if target.size is None or (
            value.family is Family.TEXT and value.size is not None and value.size <= target.size
        ):
            return Verdict.FITS, ""
        return Verdict.NARROWS, f"values longer than {target.size} characters do not fit"
    if Family.OTHER in (value.family, target.family):
        if value.sql == target.sql:
            return Verdict.FITS, ""
        return Verdict.UNCHECKED, f"propagator does not know how {value.sql} stores as {target.sql}"
    if value.family is Family.TEXT:
        if target.family in _NUMBERS:
            fix = "add a transform that yields numbers (:decimal, :int or :float)"
            return Verdict.IMPOSSIBLE, f"text values are not numbers; {fix}"
        return Verdict.IMPOSSIBLE, f"text values are not {target.sql}; {_map(target)}"
    if value.family is not target.family and Family.BOOLEAN in (value.family, target.family):
        return Verdict.IMPOSSIBLE, f"{value.sql} values are not {target.sql}; {_map(target)}"
    if value.family is Family.DATETIME or target.family is Family.DATETIME:
        return _datetimes(value, target)
    return _numbers(value, target)


def _map(target: ColumnType) -> str:
    noun = "numeric" if target.family in _NUMBERS else target.family.value
    return f"map a {noun} column"


def _datetimes(value: ColumnType, target: ColumnType) -> tuple[Verdict, str]:
    if value.family is not target.family:
        return Verdict.IMPOSSIBLE, f"{value.sql} values are not {target.sql}; {_map(target)}"
    dates = ("date", "timestamp", "timestamptz")
    times = ("time", "timetz")
    if value.name == target.name or all(t.name in dates for t in (value, target)):
        return Verdict.FITS, ""
    if all(t.name in times for t in (value, target)):
        return Verdict.FITS, ""
    return Verdict.IMPOSSIBLE, f"{value.sql} values are not {target.sql} values"


def _numbers(value: ColumnType, target: ColumnType) -> tuple[Verdict, str]:
    if target.family is Family.FLOAT:
        if _into_float(value, target):
            return Verdict.FITS, ""
        return Verdict.UNCHECKED, f"the range of {value.sql} into {target.sql} is not checked"
    if target.family is Family.INTEGER:
        return _into_integer(value, target)
    if target.size is None:
        return Verdict.FITS, ""
    room = target.size - target.scale  # digits before the decimal point
    if value.family is Family.INTEGER and value.size is not None:
        if _INTEGER_DIGITS[value.size] <= room:
            return Verdict.FITS, ""
    elif value.family is Family.NUMERIC and value.size is not None:
        digits = value.size - value.scale
        if digits < room or (digits == room and value.scale <= target.scale):
            return Verdict.FITS, ""
    return Verdict.NARROWS, f"values of {room} or more digits before the point do not fit"


def _into_float(value: ColumnType, target: ColumnType) -> bool:
    """Integers, bounded numerics and no wider floats always fit a float's range."""
    if value.family is Family.INTEGER:
        return True
    if value.size is None or target.size is None:
        return False
    if value.family is Family.FLOAT:
        return value.size <= target.size
    return value.size - value.scale <= (38 if target.size == 32 else 308)


def _into_integer(value: ColumnType, target: ColumnType) -> tuple[Verdict, str]:
    if value.family is Family.FLOAT or (value.family is Family.NUMERIC and value.scale > 0):
        return Verdict.IMPOSSIBLE, "values with decimals are not integers; add the transform :int"
    if value.size is not None and (
        (value.family is Family.INTEGER and value.size <= (target.size or 0))
        or (value.family is Family.NUMERIC and value.size < _INTEGER_DIGITS[target.size])
    ):
        return Verdict.FITS, ""
    return Verdict.NARROWS, f"values outside the range of {target.sql} do not fit"


_WIDE = Context(prec=2000)


def _integer_range(bits: int | None) -> tuple[int, int]:
    if bits is None:
        return -(2**2000), 2**2000
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def fits(value: Any, target: ColumnType) -> bool:
    """Whether the sandbox column ``target`` can store ``value`` (sent as its text form).

    The same rule as the server-side count: numeric(p,s): ``abs(round(v, s)) <
    10^(p-s)``; an integer: within range, written without decimals;
    varchar(n)/char(n): at most n characters once trailing spaces are dropped.
    Values of a type the rule does not cover are left to the sandbox (True).
    """
    if value is None or isinstance(value, bool):
        return True
    family = target.family
    if isinstance(value, str) and family in (Family.NUMERIC, Family.INTEGER):
        value = _number_from_text(value, integer=family is Family.INTEGER)
        if value is None:
            return False  # the sandbox would refuse the text as a number
    if family is Family.TEXT and target.size is not None:
        text = value if isinstance(value, str) else str(value)
        return len(text) <= target.size or len(text.rstrip(" ")) <= target.size
    if family is Family.NUMERIC and target.size is not None:
        return _fits_numeric(value, target.size, target.scale)
    if family is Family.INTEGER:
        low, high = _integer_range(target.size)
        if isinstance(value, int):
            return low <= value <= high
        if isinstance(value, float):
            return False  # sent as "5.0", which is not an integer's text
        if isinstance(value, Decimal):
            exponent = value.as_tuple().exponent
            return isinstance(exponent, int) and exponent >= 0 and low <= value <= high
    return True


def _number_from_text(text: str, *, integer: bool) -> Decimal | int | None:
    """The number PostgreSQL reads from ``text`` (None: not a number it accepts)."""
    stripped = text.strip()
    if integer:
        return int(stripped) if _INTEGER_TEXT.fullmatch(stripped) else None
    if not _NUMERIC_TEXT.fullmatch(stripped):
        return None
    return Decimal(stripped)


def _fits_numeric(value: Any, precision: int, scale: int) -> bool:
    if isinstance(value, float):
        value = Decimal(repr(value))  # the text sent is the float's shortest repr
    elif isinstance(value, int):
        value = Decimal(value)
    elif not isinstance(value, Decimal):
        return True
    if value.is_nan():
        return True
    if not value.is_finite():
        return False
    room = precision - scale
    if value and value.adjusted() >= room:
        return False
    rounded = value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP, context=_WIDE)
    return bool(abs(rounded) < Decimal(10) ** room)
