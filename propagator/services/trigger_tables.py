"""The production tables whose triggers a command manages, each with every mapping reading it.

The selection (``--mapping``, ``PROPAGATOR_MAPPINGS``) chooses the tables, but
a table's one trigger set serves every mapping of the file that reads it: were
its columns those of the selected mappings only, installing for one mapping
would silently stop announcing the columns only another mapping reads, and
each deployment's ``status`` would call the other's install stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from propagator.settings import Configuration, WatchedTable, load_configuration, watched_tables
from propagator.settings.mappings import read_mapping_tables, resolve_mappings

__all__ = ["load_watched_tables", "tables_with_every_reader"]


def tables_with_every_reader(
    selected: Configuration, every: Configuration
) -> tuple[WatchedTable, ...]:
    """The tables the selected mappings read, each with every mapping of ``every`` reading it."""
    readers = {(t.production_url, t.table): t for t in watched_tables(every.mappings)}
    return tuple(
        readers.get((t.production_url, t.table), t) for t in watched_tables(selected.mappings)
    )


def load_watched_tables(
    config_file: Path | None, selection: Sequence[str] = ()
) -> tuple[WatchedTable, ...]:
    """The selected mappings' production tables, from the environment and the file."""
    selected = load_configuration(config_file, selection=selection)
    if not selected.named:
        return watched_tables(selected.mappings)
    everything = selected.settings.model_copy(update={"selected_mappings": ()})
    every = resolve_mappings(everything, read_mapping_tables(config_file))
    return tables_with_every_reader(selected, every)
