"""What one production table's triggers watch: the union of what its mappings read.

Every mapping of a production table is served by the same trigger set and the
same channel, so the triggers must announce a change to any column one of them
reads, and nothing else. Two mappings of one table therefore install exactly
what one mapping reading both mappings' columns would: the SQL depends on the
table, its channel, its key and the watched columns, never on the mappings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from propagator.core.identifiers import QualifiedName
from propagator.errors import ConfigurationError
from propagator.settings import Settings, WatchedTable, watched_tables

__all__ = ["TriggerSpec", "Watched", "trigger_spec", "union_watched_columns"]

Watched = Settings | WatchedTable
"""One mapping's settings (a table read by that mapping alone), or a table and its mappings."""


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """Everything the installed SQL depends on, for one production table."""

    table: QualifiedName
    channel: str
    key_columns: tuple[str, ...]
    watched_columns: tuple[str, ...]
    mappings: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    """Production filters whose columns are still to be added to the watched ones (asked of
    the production catalog by ``with_filter_columns``): a change to a filter column can
    bring a row into a mapping, so it must be announced too."""

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Watched columns that are not part of the key (the mapped sources)."""
        return tuple(c for c in self.watched_columns if c not in self.key_columns)


def union_watched_columns(mappings: Sequence[Settings]) -> tuple[str, ...]:
    """The key columns, then each mapping's source columns not seen before, in mapping order.

    For one mapping this is exactly its own watched columns, so the default
    mapping installs the same SQL as ever.
    """
    columns: dict[str, None] = {}
    for mapping in mappings:
        columns.update(dict.fromkeys(mapping.mapping_spec.watched_columns))
    return tuple(columns)


def _spec_of_table(table: WatchedTable) -> TriggerSpec:
    if not table.mappings:
        raise ValueError(f"no mapping reads {table.table}")
    first = table.mappings[0]
    for mapping in table.mappings[1:]:
        if mapping.key_columns != first.key_columns:
            raise ConfigurationError(
                f"mappings {first.mapping_name!r} and {mapping.mapping_name!r} read "
                f"{table.table} with different key columns; one trigger set announces one key"
            )
    return TriggerSpec(
        table=table.table,
        channel=table.channel,
        key_columns=first.mapping_spec.key_columns,
        watched_columns=union_watched_columns(table.mappings),
        mappings=table.names,
        filters=tuple(
            dict.fromkeys(m.production_filter for m in table.mappings if m.production_filter)
        ),
    )


def trigger_spec(target: Watched | TriggerSpec) -> TriggerSpec:
    """The trigger specification of a table, or of the one table a mapping's settings read."""
    if isinstance(target, TriggerSpec):
        return target
    if isinstance(target, Settings):
        (table,) = watched_tables((target,))
        return _spec_of_table(table)
    return _spec_of_table(target)
