"""PostgreSQL access in one import: connections, catalog checks, streaming reads, set-based apply.

Each concept lives in its own module; this one gathers their public names for
callers that want the whole adapter:

- ``adapters.connections``: ``connect``, ``translate_error`` (the error boundary);
- ``adapters.tables``: ``describe_table``, ``check_mapping``, ``TableInfo``;
- ``adapters.parameters``: values as parameters, the production filter;
- ``adapters.reads``: ``stream_rows``, ``prefetch``, ``read_by_keys``;
- ``adapters.writes``: ``apply_values``.
"""

from __future__ import annotations

from propagator.adapters.connections import connect, translate_error
from propagator.adapters.parameters import filter_condition, to_sql_text, with_parameters
from propagator.adapters.reads import prefetch, read_by_keys, stream_rows
from propagator.adapters.tables import (
    ColumnInfo,
    TableInfo,
    check_mapping,
    describe_table,
    table_identifier,
)
from propagator.adapters.writes import ApplyOutcome, apply_values
from propagator.errors import Side

__all__ = [
    "ApplyOutcome",
    "ColumnInfo",
    "Side",
    "TableInfo",
    "apply_values",
    "check_mapping",
    "connect",
    "describe_table",
    "filter_condition",
    "prefetch",
    "read_by_keys",
    "stream_rows",
    "table_identifier",
    "to_sql_text",
    "translate_error",
    "with_parameters",
]
