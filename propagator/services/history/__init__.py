"""Sync history: every sandbox change, recorded in the transaction that made it.

The history hook runs inside the sandbox transaction of each applied batch
(``converge_keys(..., on_applied=...)``), so a batch that rolls back leaves no
history and a committed one leaves exactly one row per changed field. Rows are
written set-based (one ``INSERT … SELECT FROM unnest`` per batch) into a schema
of the sandbox's own (``history_schema``), created and upgraded by versioned
migrations in ``sql/history/``. Old rows are pruned by age in small batches.
Each row names the mapping that wrote it: mappings writing into one sandbox
share its history table, and each reads and prunes its own rows.

The parts: ``schema`` (migrations and setup), ``recording`` (the apply hook),
``queries`` (filters and pages), ``reader`` (reads for the HTTP endpoint),
``readers`` (which table holds which mapping, and routing reads to it),
``retention`` (pruning) and ``facade`` (``History``, all of it as configured).
"""

from __future__ import annotations

from propagator.services.history.facade import History
from propagator.services.history.queries import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    HistoryEntry,
    HistoryPage,
    HistoryQuery,
    parse_key,
    parse_time,
    query,
)
from propagator.services.history.reader import HistoryReader, mapping_names
from propagator.services.history.readers import HistoryReaders, HistorySandbox, history_sandboxes
from propagator.services.history.recording import json_text, record
from propagator.services.history.retention import (
    PRUNE_BATCH_ROWS,
    PRUNE_INTERVAL,
    PruneResult,
    prune,
)
from propagator.services.history.schema import (
    HISTORY_SOURCES,
    HISTORY_TABLE,
    Migration,
    SetupResult,
    installed_version,
    migrations,
    setup,
)

__all__ = [
    "DEFAULT_LIMIT",
    "HISTORY_SOURCES",
    "HISTORY_TABLE",
    "MAX_LIMIT",
    "PRUNE_BATCH_ROWS",
    "PRUNE_INTERVAL",
    "History",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "HistoryReader",
    "HistoryReaders",
    "HistorySandbox",
    "Migration",
    "PruneResult",
    "SetupResult",
    "history_sandboxes",
    "installed_version",
    "json_text",
    "mapping_names",
    "migrations",
    "parse_key",
    "parse_time",
    "prune",
    "query",
    "record",
    "setup",
]
