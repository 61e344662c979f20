"""History of several mappings: which sandbox history table holds which mapping's rows.

Mappings writing into one sandbox database with one ``history_schema`` share a
history table; mappings elsewhere each have their own. ``history_sandboxes``
groups the mappings by table (for ``propagator history``), and ``HistoryReaders``
routes each ``GET /history`` to the one table it concerns. A name is checked
against the configured mappings before any read, so unknown names never reach SQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from propagator.core.redact import mask_url
from propagator.errors import ConfigurationError
from propagator.services.history.facade import History
from propagator.services.history.queries import HistoryQuery
from propagator.services.history.reader import HistoryReader, mapping_names
from propagator.settings import Settings

__all__ = ["HistoryReaders", "HistorySandbox", "history_sandboxes"]


@dataclass(frozen=True, slots=True)
class HistorySandbox:
    """One sandbox history table and the mappings writing into it, in configured order."""

    mappings: tuple[Settings, ...]

    @property
    def settings(self) -> Settings:
        """Settings to connect with: the first mapping's (the table is the same for all)."""
        return self.mappings[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.mapping_name for m in self.mappings)

    @property
    def sandbox(self) -> str:
        """The sandbox database as people may see it: its URL, password masked."""
        url = self.settings.sandbox_database_url
        return mask_url(url.get_secret_value()) if url else "(SANDBOX_DATABASE_URL not set)"

    def heading(self) -> str:
        """One line naming the sandbox, its history schema and its mappings."""
        return (
            f"sandbox {self.sandbox} (history schema {self.settings.history_schema}): "
            f"mappings {', '.join(self.names)}"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "sandbox": self.sandbox,
            "history_schema": self.settings.history_schema,
            "mappings": list(self.names),
        }


def history_sandboxes(mappings: Sequence[Settings]) -> tuple[HistorySandbox, ...]:
    """The history tables of ``mappings`` (same sandbox URL and schema: one table), first first."""
    grouped: dict[tuple[str, str], list[Settings]] = {}
    for mapping in mappings:
        url = mapping.sandbox_database_url
        place = (url.get_secret_value() if url else "", mapping.history_schema)
        grouped.setdefault(place, []).append(mapping)
    return tuple(HistorySandbox(tuple(group)) for group in grouped.values())


EVERY_MAPPING = "*"
"""``mapping=*``: the newest entries of every mapping, from every sandbox."""


class HistoryReaders:
    """``GET /history`` for the mappings a daemon serves, one reader per history table.

    The ``mapping`` parameter (comma separated) names mappings of one sandbox;
    without it the mappings must all share one sandbox. Otherwise, and for a
    name that is not one of ``mappings``, the read is refused with one line.
    """

    def __init__(self, mappings: Sequence[Settings]) -> None:
        if not mappings:
            raise ValueError("HistoryReaders needs at least one mapping")
        self.sandboxes = history_sandboxes(mappings)
        self._readers = tuple(
            HistoryReader(History(place.settings), place.settings) for place in self.sandboxes
        )
        self._place_of = {
            name: number for number, place in enumerate(self.sandboxes) for name in place.names
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._place_of)

    def route(self, text: str | None) -> tuple[int, tuple[str, ...]]:
        """Which history table to read (its number) and for which mappings."""
        asked = mapping_names(text)
        for name in asked:
            if name not in self._place_of:
                raise ConfigurationError(
                    f"unknown mapping {name[:40]!r}: the mappings are {', '.join(self.names)}"
                )
        if not asked:
            if len(self.sandboxes) > 1:
                raise ConfigurationError(
                    f"the mappings write into {len(self.sandboxes)} sandboxes: name one with "
                    f"?mapping=NAME ({', '.join(self.names)})"
                )
            return 0, self.sandboxes[0].names
        places = {self._place_of[name] for name in asked}
        if len(places) > 1:
            raise ConfigurationError(
                f"mappings {', '.join(asked)} write into different sandboxes: "
                "name mappings of one sandbox at a time"
            )
        return places.pop(), asked

    def read(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        """A page, as ``HistoryReader`` gives it, from the table the mappings asked for live in."""
        if params.get("mapping") == EVERY_MAPPING and len(self._readers) > 1:
            return self.read_every(params)
        text = None if params.get("mapping") == EVERY_MAPPING else params.get("mapping")
        number, names = self.route(text)
        return self._readers[number].read_page(HistoryQuery.from_params(params, mappings=names))

    def read_every(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        """The newest entries of every sandbox together (the status page's recent changes).

        Each table has its own ids, so this one page cannot be continued with ``before``.
        """
        if params.get("before") is not None:
            raise ConfigurationError("mapping=* reads the newest entries only: no 'before'")
        pages = [
            reader.read_page(HistoryQuery.from_params(params, mappings=place.names))
            for reader, place in zip(self._readers, self.sandboxes, strict=True)
        ]
        limit = HistoryQuery.from_params(params).limit
        entries = sorted(
            (entry for page in pages for entry in page["entries"]),
            key=lambda entry: str(entry.get("applied_at", "")),
            reverse=True,
        )[:limit]
        return {**pages[0], "entries": entries, "count": len(entries), "next_before": None}

    async def __call__(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        return await asyncio.to_thread(self.read, params)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
