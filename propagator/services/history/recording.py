"""Recording: one history row per changed field, inside the transaction that changed it.

Rows are written set-based (one ``INSERT … SELECT FROM unnest`` per batch, see
``sql/history/record.sql``), with values as JSON text that keeps their type
readable: numbers stay numbers, exactly. Each row names the mapping that wrote
it, since mappings sharing a sandbox share its history table.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, Final

from propagator.adapters.connections import Connection
from propagator.adapters.postgres import with_parameters
from propagator.core.mapping import format_key
from propagator.core.plan import JobMappingResult
from propagator.services.context import AppliedHook, Source
from propagator.services.history.schema import HISTORY_SOURCES, schema_statement
from propagator.settings import DEFAULT_MAPPING

__all__ = ["json_text", "record", "recording_hook"]


def _decimal_json(value: Decimal) -> str:
    return str(value) if value.is_finite() else json.dumps(str(value))


def _float_json(value: float) -> str:
    return repr(value) if math.isfinite(value) else json.dumps(repr(value))


def _string_json(value: str) -> str:
    return encode_basestring(value)  # json.dumps(value, ensure_ascii=False), minus its overhead


def _array_json(values: Sequence[Any]) -> str:
    return "[" + ",".join([json_text(value) for value in values]) + "]"


_JSON_BY_TYPE: Final[dict[type, Callable[[Any], str]]] = {
    int: str,
    str: _string_json,
    Decimal: _decimal_json,
    float: _float_json,
    bool: lambda value: "true" if value else "false",
    tuple: _array_json,  # keys
    list: _array_json,
}


def json_text(value: Any) -> str:
    """A value as JSON text, its type kept readable: numbers stay numbers, exactly.

    Decimals keep their digits and scale (``12.10``), which ``json.dumps`` cannot
    do; dates and times become ISO strings, like PostgreSQL's ``to_jsonb``.
    """
    if value is None:
        return "null"
    exact = _JSON_BY_TYPE.get(type(value))
    if exact is not None:
        return exact(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, Decimal):
        return _decimal_json(value)
    if isinstance(value, float):
        return _float_json(value)
    if isinstance(value, str):
        return _string_json(value)
    if isinstance(value, datetime | date | time_of_day):
        return json.dumps(value.isoformat())
    if isinstance(value, bytes | bytearray | memoryview):
        return json.dumps("\\x" + bytes(value).hex())
    if isinstance(value, list | tuple):
        return _array_json(value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return json.dumps(str(value), ensure_ascii=False)


def _epoch_to_datetime(moment: float | datetime | None) -> datetime | None:
    if moment is None or isinstance(moment, datetime):
        return moment
    return datetime.fromtimestamp(moment, UTC)


def record(
    conn: Connection,
    schema: str,
    results: Sequence[JobMappingResult],
    source: Source,
    *,
    changed_at: float | datetime | None = None,
    batch_id: uuid.UUID | None = None,
    mapping: str = DEFAULT_MAPPING,
) -> int:
    """Insert one history row per changed field of ``results``; returns how many.

    Meant to run inside the transaction that applied ``results``: one
    statement, however many rows, each naming ``mapping``.
    """
    if source not in HISTORY_SOURCES:
        raise ValueError(f"unknown history source {source!r}")
    keys: list[str] = []
    labels: list[str] = []
    fields: list[str] = []
    olds: list[str] = []
    news: list[str] = []
    for result in results:
        key_json, label = json_text(result.key), format_key(result.key)
        for change in result.changes:
            keys.append(key_json)
            labels.append(label)
            fields.append(change.field)
            olds.append(json_text(change.old))
            news.append(json_text(change.new))
    if not fields:
        return 0
    conn.execute(
        with_parameters(schema_statement("history/record.sql", schema), [schema]),
        {
            "batch_id": batch_id or uuid.uuid4(),
            "source": source,
            "mapping": mapping,
            "changed_at": _epoch_to_datetime(changed_at),
            "keys": keys,
            "key_labels": labels,
            "fields": fields,
            "old_values": olds,
            "new_values": news,
        },
    )
    return len(fields)


def recording_hook(
    schema: str,
    *,
    changed_at: float | datetime | None,
    after: AppliedHook | None,
    counted: Callable[[int], None],
    mapping: str = DEFAULT_MAPPING,
) -> AppliedHook:
    """An ``on_applied`` hook that records each applied batch and reports the row count.

    Every call is one sandbox transaction, so it gets a batch id of its own (a
    bisected batch gives each committed part its own). ``after`` runs first in
    the same transaction (a leadership check, say).
    """

    def on_applied(conn: Connection, results: Sequence[JobMappingResult], source: Source) -> None:
        if after is not None:
            after(conn, results, source)
        counted(record(conn, schema, results, source, changed_at=changed_at, mapping=mapping))

    return on_applied
