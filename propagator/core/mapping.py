"""What to mirror: key columns and field mappings.

``FieldMapping`` keeps the seed's name and shape (``FieldMapping("fab_order",
"fab_order", transform=float)``); ``MappingSpec`` bundles the mappings with the
key columns so every path (reconcile, events, the seed API) plans from one value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from propagator.core.identifiers import validate_identifier
from propagator.core.transforms import NamedTransform, resolve_transform

__all__ = ["DEFAULT_KEY_COLUMNS", "FieldMapping", "Key", "MappingSpec", "format_key"]

Key = tuple[Any, ...]
DEFAULT_KEY_COLUMNS: tuple[str, ...] = ("job", "release")


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """Copy production column ``source`` into sandbox column ``target``.

    ``transform`` is applied to the production value before comparing, so a
    type mismatch between the two sides (text vs. numeric, say) is handled
    explicitly rather than by accident.
    """

    source: str
    target: str
    transform: Callable[[Any], Any] | str | None = field(default=None)

    def __post_init__(self) -> None:
        validate_identifier(self.source, what="source column")
        validate_identifier(self.target, what="target column")
        if isinstance(self.transform, str):
            object.__setattr__(self, "transform", resolve_transform(self.transform))

    def apply(self, value: Any) -> Any:
        """The value the sandbox should hold for this production value."""
        if self.transform is None:
            return value
        assert callable(self.transform)
        if value is None and not isinstance(self.transform, NamedTransform):
            return None  # user callables (float, int, ...) are not asked to convert NULL
        return self.transform(value)

    @property
    def transform_name(self) -> str | None:
        """The configuration name of the transform, or a readable label for a callable."""
        if self.transform is None:
            return None
        if isinstance(self.transform, NamedTransform):
            return self.transform.name
        return getattr(self.transform, "__name__", repr(self.transform))

    def describe(self) -> str:
        arrow = f"{self.source} -> {self.target}"
        return arrow if self.transform is None else f"{arrow} ({self.transform_name})"


@dataclass(frozen=True, slots=True)
class MappingSpec:
    """Key columns (same names on both sides) and the fields to mirror."""

    key_columns: tuple[str, ...]
    field_mappings: tuple[FieldMapping, ...]

    def __post_init__(self) -> None:
        if not self.key_columns:
            raise ValueError("at least one key column is required")
        if not self.field_mappings:
            raise ValueError("at least one field mapping is required")
        for column in self.key_columns:
            validate_identifier(column, what="key column")
        if len(set(self.key_columns)) != len(self.key_columns):
            raise ValueError("key columns must be distinct")
        targets = [m.target for m in self.field_mappings]
        if len(set(targets)) != len(targets):
            raise ValueError("two field mappings write the same target column")
        overlap = set(targets) & set(self.key_columns)
        if overlap:
            raise ValueError(f"a key column cannot also be a mapping target: {sorted(overlap)}")

    @classmethod
    def build(
        cls, key_columns: Sequence[str], field_mappings: Sequence[FieldMapping]
    ) -> MappingSpec:
        return cls(tuple(key_columns), tuple(field_mappings))

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Distinct production columns to read, in mapping order."""
        return tuple(dict.fromkeys(m.source for m in self.field_mappings))

    @property
    def target_columns(self) -> tuple[str, ...]:
        return tuple(m.target for m in self.field_mappings)

    @property
    def watched_columns(self) -> tuple[str, ...]:
        """Production columns whose change must wake the listener: keys and sources."""
        return tuple(dict.fromkeys((*self.key_columns, *self.source_columns)))


def format_key(key: Key) -> str:
    """The seed's human label for a key: ``10001-A`` for ``(10001, "A")``."""
    return "-".join("NULL" if part is None else str(part) for part in key)
