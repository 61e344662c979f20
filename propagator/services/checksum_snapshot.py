"""One side of a checksum reconcile, read from a single ``REPEATABLE READ READ ONLY`` snapshot.

Every pass on one side (digests, a finer pass, the rows of differing segments)
runs in the same transaction, so the passes agree with each other whatever
changes meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.reads import limit_parallel_workers
from propagator.adapters.tables import TableInfo, table_identifier
from propagator.errors import PermanentError, Side
from propagator.sql import load_sql

__all__ = ["ServerFacts", "Snapshot"]

_FETCH_SIZE = 10_000
_REFINE_WORK_MEM = "32MB"
# Reading rows by ctid: the planner prices each ctid as a random read and scans the
# whole table (with parallel workers) past a few thousand; a TID scan reads only them.
_TID_SCAN_ONLY = (
    "enable_seqscan",
    "enable_indexscan",
    "enable_bitmapscan",
    "max_parallel_workers_per_gather",
)


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What one server says about itself and the table, read as its snapshot begins."""

    version: int
    encoding: str
    estimated_rows: float
    keys_unique: bool
    addressable: bool  # rows can be fetched again by ctid within the snapshot
    builtin_probe: list[tuple[Any, ...]] | None
    md5_probe: list[tuple[Any, ...]] | None


class Snapshot:
    """One side read from a single ``REPEATABLE READ READ ONLY`` transaction."""

    def __init__(self, conn: Connection, table: TableInfo, parallel_workers: int = 0) -> None:
        self.conn = conn
        self.table = table
        self.side: Side = table.side
        self.parallel_workers = parallel_workers

    def begin(self, key_columns: tuple[str, ...]) -> ServerFacts:
        conn = self.conn
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL extra_float_digits = 1")
            limit_parallel_workers(conn, self.parallel_workers)
            facts = conn.execute(
                load_sql("checksum/server_facts.sql"),
                {
                    "table": table_identifier(self.table.name).as_string(conn),
                    "keys": list(key_columns),
                },
            ).fetchone()
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"inspecting {self.table.name}") from None
        if facts is None:
            raise PermanentError(f"the {self.side} table {self.table.name} disappeared")
        return ServerFacts(
            int(facts[0]),
            str(facts[1]),
            float(facts[2]),
            bool(facts[3]),
            bool(facts[4]),
            self._probe("checksum/hash_probe.sql"),
            self._probe("checksum/md5_probe.sql"),
        )

    def _probe(self, name: str) -> list[tuple[Any, ...]] | None:
        """The probe's rows, or None when this server cannot run it."""
        return self.fetch_or_none(load_sql(name))

    def fetch_or_none(self, query: str | sql.Composed) -> list[tuple[Any, ...]] | None:
        """The rows of a statement the reconcile can do without, or None when this server
        refuses it: run in a savepoint, so the snapshot goes on either way."""
        try:
            with self.conn.transaction():
                return self.conn.execute(query).fetchall()
        except psycopg.Error:
            return None

    def digests(self, query: sql.Composed) -> tuple[int, bytes, bytes | None]:
        """Rows hashed, packed digests, and their segment numbers when not every segment."""
        try:
            # The planner cannot know a masked hash has few distinct values and may
            # sort the whole table to group it; the hash aggregate needs a few MB.
            self.conn.execute("SET LOCAL enable_sort = off")
            with self.conn.cursor(binary=True) as cursor:
                found = cursor.execute(query).fetchone()
            self.conn.execute("SET LOCAL enable_sort = on")
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"checksumming {self.table.name}") from None
        if found is None:
            raise PermanentError(f"checksumming {self.table.name} returned nothing")
        ids = None if found[2] is None else bytes(found[2])
        return int(found[0]), bytes(found[1] or b""), ids

    def allow_pass_memory(self) -> None:
        """Raise this transaction's work_mem (never lower it): the finer pass's hash table
        and the row-hash pass's sort stay in memory."""
        try:
            self.conn.execute(
                "SELECT set_config('work_mem', %s, true) "
                "WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(%s)",
                (_REFINE_WORK_MEM, _REFINE_WORK_MEM),
            )
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"checksumming {self.table.name}") from None

    def rows(self, query: sql.Composed, *, by_location: bool = False) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query`` in batches; ``by_location``: it picks them by ctid, and is
        planned as a TID scan (the settings changed for its planning only)."""
        try:
            with self.conn.cursor(name=f"propagator_checksum_{self.side}") as cursor:
                cursor.itersize = _FETCH_SIZE
                if by_location:
                    with self._tid_scan_only():
                        cursor.execute(query)  # DECLARE: planned now
                else:
                    cursor.execute(query)
                while batch := cursor.fetchmany(_FETCH_SIZE):
                    yield from batch
        except psycopg.Error as error:
            raise translate_error(error, self.side, f"reading {self.table.name}") from None

    @contextlib.contextmanager
    def _tid_scan_only(self) -> Iterator[None]:
        """Plan what runs inside with every other scan off; the settings as they were after."""
        # pg_settings' rows are read before any set_config of the same statement runs.
        before = self.conn.execute(
            "SELECT array_agg(name), array_agg(setting), "
            "array_agg(pg_catalog.set_config(name, CASE WHEN vartype = 'bool' THEN 'off' "
            "ELSE '0' END, true)) FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
            (list(_TID_SCAN_ONLY),),
        ).fetchone()
        yield
        if before is not None:
            self.conn.execute(
                "SELECT pg_catalog.set_config(n, v, true) FROM unnest(%s::text[], %s::text[]) "
                "AS t(n, v)",
                before[:2],
            )

    def end(self) -> None:
        if not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()
