"""Whether the key columns identify one row: which unique index proves it, and the refusal.

A unique index (or the constraint behind it) proves the key columns unique when
its columns are all key columns: an index on a subset of them already allows
no two rows with one key. NULLs never collide in a unique index, but a row with
a NULL key part is never matched either, so the proof holds for every row that
is. Where no index proves it, a query looks for one duplicate instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from propagator.core.mapping import Key, format_key

__all__ = ["KeyProof", "UniqueIndex", "covering_index", "non_unique_message"]

_KINDS = {"p": "primary key", "u": "unique constraint"}


@dataclass(frozen=True, slots=True)
class UniqueIndex:
    """A valid unique index on plain columns, with the constraint that made it, if any."""

    name: str
    columns: tuple[str, ...]
    constraint: str | None = None  # pg_constraint.contype: 'p' or 'u'

    @property
    def kind(self) -> str:
        return _KINDS.get(self.constraint or "", "unique index")

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class KeyProof:
    """How the key columns were proved unique on one side."""

    side: str
    how: str  # "primary key jobs_pkey", or "no duplicate key found" without an index
    nullable: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.side}: {self.how}"
        if self.nullable:
            text += (
                f", {', '.join(self.nullable)} nullable: NULLs never collide in a unique index, "
                "and rows with a NULL key part are never matched"
            )
        return text


def covering_index(
    key_columns: Sequence[str], indexes: Iterable[UniqueIndex]
) -> UniqueIndex | None:
    """The index that proves ``key_columns`` unique, a primary key first; None if none does."""
    keys = set(key_columns)
    covering = [index for index in indexes if index.columns and set(index.columns) <= keys]
    order = {"p": 0, "u": 1}
    covering.sort(key=lambda index: (order.get(index.constraint or "", 2), index.name))
    return covering[0] if covering else None


def non_unique_message(where: str, key_columns: Sequence[str], duplicate: Key) -> str:
    """The one line that refuses non-unique keys: where (``the sandbox table public.jobs``),
    the key columns, one duplicate key, and the fix."""
    columns = ", ".join(key_columns)
    return (
        f"key columns ({columns}) are not unique in {where}: "
        f"duplicate key {format_key(duplicate)}; add a unique index on ({columns}) "
        "or choose key columns that identify one row"
    )
