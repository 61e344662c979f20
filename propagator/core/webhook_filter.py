"""What a webhook endpoint wants of the history: its own module, so loading the
settings does not load the outbox (its hashing, signing and JSON) at every start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DeliveryFilter"]


class _Change(Protocol):
    """What a filter looks at in a history row (``core.outbox.OutboxRow``)."""

    @property
    def mapping(self) -> str: ...

    @property
    def field(self) -> str: ...

    @property
    def source(self) -> str: ...


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """What an endpoint wants; an empty tuple means everything of that kind."""

    mappings: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def wants(self, row: _Change) -> bool:
        return (
            (not self.mappings or row.mapping in self.mappings)
            and (not self.fields or row.field in self.fields)
            and (not self.sources or row.source in self.sources)
        )
