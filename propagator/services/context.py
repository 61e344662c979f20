"""What every sync works from: the mapping and both tables' definitions, checked once.

Converging, streaming and checksum compares all take a ``SyncContext``; the
names a caller passes them (where a change came from, the hook run in the
sandbox transaction, progress) are defined here too, below all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from propagator.adapters.connections import Connection
from propagator.adapters.tables import TableInfo, check_mapping, describe_table
from propagator.core.identifiers import QualifiedName
from propagator.core.mapping import MappingSpec
from propagator.core.plan import JobMappingResult
from propagator.core.vocabulary import Source
from propagator.services.both_sides import on_both
from propagator.services.preflight import KeyProof, preflight
from propagator.settings import Settings

__all__ = [
    "AppliedHook",
    "Connection",
    "ConnectionOpener",
    "KeyProof",
    "ProgressCallback",
    "Source",
    "SyncContext",
]

AppliedHook = Callable[[Connection, Sequence[JobMappingResult], Source], None]
ProgressCallback = Callable[[int], None]
ConnectionOpener = Callable[[Literal["production", "sandbox"]], Connection]


@dataclass(frozen=True, slots=True)
class SyncContext:
    """The mapping and both tables' definitions, checked against each other once.

    ``key_proofs`` say how the key columns were proved unique on each side
    (production, then sandbox); preparing refuses keys that are not.
    """

    spec: MappingSpec
    production: TableInfo
    sandbox: TableInfo
    production_filter: str | None = None
    batch_size: int = 1000
    key_proofs: tuple[KeyProof, ...] = ()
    sandbox_lock_timeout: timedelta | None = None  # None: wait for sandbox locks as long as needed
    parallel_workers: int = 0  # per server, for each whole-table read of a reconcile

    @classmethod
    def prepare(
        cls,
        production_conn: Connection,
        sandbox_conn: Connection,
        spec: MappingSpec,
        production_table: QualifiedName,
        sandbox_table: QualifiedName,
        *,
        production_filter: str | None = None,
        batch_size: int = 1000,
        sandbox_lock_timeout: timedelta | None = None,
        parallel_workers: int = 0,
    ) -> SyncContext:
        production, sandbox = on_both(
            lambda: describe_table(production_conn, production_table, "production"),
            lambda: describe_table(sandbox_conn, sandbox_table, "sandbox"),
        )
        check_mapping(production, sandbox, spec)
        proofs = preflight(
            production_conn, sandbox_conn, production, sandbox, spec.key_columns, production_filter
        )
        return cls(
            spec,
            production,
            sandbox,
            production_filter,
            batch_size,
            proofs,
            sandbox_lock_timeout,
            parallel_workers,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, production_conn: Connection, sandbox_conn: Connection
    ) -> SyncContext:
        """The context of the configured tables, mapping, filter and batch size."""
        return cls.prepare(
            production_conn,
            sandbox_conn,
            settings.mapping_spec,
            settings.production_table_name,
            settings.sandbox_table_name,
            production_filter=settings.production_filter,
            batch_size=settings.batch_size,
            sandbox_lock_timeout=settings.sandbox_lock_timeout,
            parallel_workers=settings.reconcile_parallel_workers,
        )

    @property
    def key_width(self) -> int:
        return len(self.spec.key_columns)

    @property
    def source_reads(self) -> tuple[str, ...]:
        """Production columns read, one per field mapping (a source may feed two targets)."""
        return tuple(m.source for m in self.spec.field_mappings)
