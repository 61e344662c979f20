"""NULL-safe value comparison with the semantics of SQL ``IS DISTINCT FROM``.

The rule the whole product relies on: the sandbox is written only where a value
really differs. ``500``, ``500.0`` and ``Decimal("500.0")`` are the same value;
NULL equals NULL; NULL against a value is a change in either direction.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["canonical_number", "values_equal"]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def canonical_number(value: int | float | Decimal) -> Decimal:
    """A Decimal that compares equal for every spelling of the same number.

    Floats go through their shortest ``repr`` so ``0.1`` (a double column) and
    ``Decimal("0.1")`` (a numeric column) agree, as they do after a cast in SQL.
    """
    if isinstance(value, float):
        if math.isnan(value):
            return Decimal("NaN")
        if math.isinf(value):
            return Decimal("Infinity") if value > 0 else Decimal("-Infinity")
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    return value


def values_equal(left: Any, right: Any) -> bool:
    """True when SQL would say ``left IS NOT DISTINCT FROM right`` after a cast."""
    if left is None or right is None:
        return left is None and right is None
    if type(left) is type(right):
        try:
            if left == right:
                return True  # the common case, decided without normalising (NaN never is)
        except (InvalidOperation, TypeError, ValueError):
            pass  # signalling NaN and exotic types: the general rules below decide
    if _is_number(left) and _is_number(right):
        a, b = canonical_number(left), canonical_number(right)
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
        try:
            return a == b
        except InvalidOperation:  # pragma: no cover - only signalling NaNs raise
            return False
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    try:
        return bool(left == right)
    except Exception:  # exotic types with a failing __eq__ are simply "different"
        return False
