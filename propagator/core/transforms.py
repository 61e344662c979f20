"""Named transforms a field mapping can apply to the production value.

Named transforms exist so configuration (environment, TOML) can ask for one; the
programmatic API also accepts any callable. Each named transform knows whether
it has an exact SQL equivalent, which lets the checksum reconcile push it into
the servers; a callable never has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["TRANSFORMS", "NamedTransform", "resolve_transform"]


@dataclass(frozen=True, slots=True)
class NamedTransform:
    """A transform with a stable name, callable like the function it wraps."""

    name: str
    function: Callable[[Any], Any]
    description: str

    def __call__(self, value: Any) -> Any:
        return self.function(value)


def _none_safe(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return None if value is None else function(value)

    return apply


def _to_decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        return int(Decimal(value.strip()))
    return int(value)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _blank_to_null(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


TRANSFORMS: Mapping[str, NamedTransform] = {
    t.name: t
    for t in (
        NamedTransform("float", _none_safe(float), "convert to a double-precision number"),
        NamedTransform("int", _none_safe(_to_int), "convert to an integer (truncates)"),
        NamedTransform("decimal", _none_safe(_to_decimal), "convert to an exact decimal"),
        NamedTransform("text", _none_safe(str), "convert to text"),
        NamedTransform("strip", _none_safe(_strip), "remove surrounding white space"),
        NamedTransform("upper", _none_safe(_upper), "upper-case text"),
        NamedTransform("lower", _none_safe(_lower), "lower-case text"),
        NamedTransform("blank_to_null", _blank_to_null, "empty or blank text becomes NULL"),
    )
}


def resolve_transform(name: str) -> NamedTransform:
    """Look up a named transform, with an error that lists the valid names."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        valid = ", ".join(sorted(TRANSFORMS))
        raise ValueError(f"unknown transform {name!r} (valid: {valid})") from None
