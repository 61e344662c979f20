"""The seed's programmatic API, on SQLAlchemy engines, built on the mapping core.

Names and signatures are the seed's (``DatabaseMappingService.fetch_jobs``,
``map_jobs_by_key``, ``apply_field_updates``, ``map_production_fab_order_to_sandbox``
…); rows are plain dicts (or dataclasses) instead of DataFrames. Nothing here
decides *what* differs: planning is the core's, reading and writing the
PostgreSQL adapter's, and the one-call convenience runs the same streaming
reconcile and converge path as ``propagator reconcile``.

Engines must use the psycopg 3 driver (``postgresql+psycopg://``);
``create_engine`` accepts ``postgres://`` and ``postgresql://`` URLs too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy.engine import Engine

from propagator.adapters.connections import Connection, translate_error
from propagator.adapters.parameters import filter_condition
from propagator.adapters.reads import read_by_keys
from propagator.adapters.tables import table_identifier
from propagator.adapters.writes import apply_values
from propagator.core.filters import validate_filter
from propagator.core.mapping import DEFAULT_KEY_COLUMNS, FieldMapping, Key, MappingSpec, format_key
from propagator.core.plan import (
    FieldChange,
    JobMappingResult,
    MappingStatistics,
    RowFailure,
    plan_against_lookup,
)
from propagator.core.report import show_value
from propagator.core.uniqueness import non_unique_message
from propagator.core.values import values_equal
from propagator.errors import ConfigurationError, NonUniqueKeyError, PermanentError, SchemaError
from propagator.services.engines import (
    RECONCILE_CONNECTIONS,
    create_engine,
    describe_engine,
    driver_connection,
    engines_from_settings,
    require_columns,
    table_info,
)
from propagator.services.preflight import prove_unique
from propagator.services.reconcile import Databases, run_reconcile
from propagator.settings import Settings

__all__ = [
    "RECONCILE_CONNECTIONS",
    "DatabaseMappingService",
    "FieldMapping",
    "FieldUpdateSummary",
    "JobMappingResult",
    "LogCallback",
    "MappingStatistics",
    "Row",
    "create_engine",
    "engines_from_settings",
    "map_production_fab_order_to_sandbox",
]

Row = Mapping[str, Any]
LogCallback = Callable[[str], None]
_DEFAULT_MAPPINGS: tuple[FieldMapping, ...] = (FieldMapping("fab_order", "fab_order"),)


@dataclass(frozen=True, slots=True)
class FieldUpdateSummary:
    """What ``apply_field_updates`` planned, really wrote, and had refused."""

    dry_run: bool
    planned: int
    updated: int
    failures: tuple[RowFailure, ...] = ()

    @property
    def failed(self) -> int:
        return len(self.failures)


def _as_mapping(row: Any) -> Row:
    """Rows may be dicts, dataclass instances or SQLAlchemy rows."""
    if isinstance(row, Mapping):
        return row
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    mapping = getattr(row, "_mapping", None)
    if isinstance(mapping, Mapping):
        return mapping
    raise TypeError(f"a row must be a mapping or a dataclass instance, not {type(row).__name__}")


def _pick(row: Row, columns: Sequence[str], what: str) -> tuple[Any, ...]:
    try:
        return tuple(row[column] for column in columns)
    except KeyError as error:
        raise SchemaError(f"column {error.args[0]!r} is missing from the {what}") from None


def _change_line(result: JobMappingResult, change: FieldChange, dry_run: bool) -> str:
    prefix = "[DRY RUN] " if dry_run else ""
    return (
        f"{prefix}Job {result.label}: {change.field} "
        f"{show_value(change.old)} → {show_value(change.new)}"
    )


def _failure_line(failure: RowFailure) -> str:
    if failure.kind == "unfit":
        return f"Job {format_key(failure.key)} not written: {failure.error}"
    return f"Job {format_key(failure.key)} rejected by the sandbox: {failure.error}"


class DatabaseMappingService:
    """The seed's service: fetch, index, map by key, apply; every method is static."""

    @staticmethod
    def fetch_jobs(
        engine: Engine,
        columns: Sequence[str],
        where: str | None = None,
        table: str = "jobs",
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` as dicts of ``columns``.

        ``where`` is trusted SQL (a boolean expression written by the caller, never
        user input); it runs in a READ ONLY transaction so it cannot write.
        """
        if not columns:
            raise ConfigurationError("fetch_jobs needs at least one column")
        if where:
            try:
                validate_filter(where)
            except ValueError as error:
                raise ConfigurationError(f"fetch_jobs: where {error}") from None
        with driver_connection(engine) as conn:
            info = table_info(conn, table, engine, "production")
            require_columns(info, columns, engine)
            query = sql.SQL("SELECT {columns} FROM {table}").format(
                columns=sql.SQL(", ").join(sql.Identifier(column) for column in columns),
                table=table_identifier(info.name),
            )
            if where:
                query = sql.SQL("{} WHERE {}").format(query, filter_condition(where))
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    with conn.cursor(row_factory=dict_row) as cursor:
                        return cursor.execute(query).fetchall()
            except psycopg.Error as error:
                raise translate_error(error, "production", f"reading {info.name}") from None

    @staticmethod
    def create_job_lookup(
        rows: Iterable[Any], key_columns: Sequence[str] = DEFAULT_KEY_COLUMNS, side: str = "given"
    ) -> dict[Key, Row]:
        """Index rows by their key tuple; rows with a NULL key part cannot match and are left out.

        Two rows with one key make the target ambiguous: ``NonUniqueKeyError``.
        """
        lookup: dict[Key, Row] = {}
        for row in rows:
            mapping = _as_mapping(row)
            key = _pick(mapping, key_columns, "rows")
            if any(part is None for part in key):
                continue
            if key in lookup:
                raise NonUniqueKeyError(non_unique_message(f"the {side} rows", key_columns, key))
            lookup[key] = mapping
        return lookup

    @staticmethod
    def map_jobs_by_key(
        prod_rows: Iterable[Any],
        sandbox_rows: Iterable[Any],
        field_mappings: Sequence[FieldMapping] | None = None,
        key_columns: Sequence[str] = DEFAULT_KEY_COLUMNS,
    ) -> tuple[list[JobMappingResult], MappingStatistics]:
        """Match production rows to sandbox rows by key and plan each field change.

        One result per production row (matched or not found in the sandbox);
        the statistics also count sandbox rows production does not have.
        """
        spec = MappingSpec.build(key_columns, field_mappings or _DEFAULT_MAPPINGS)
        width = len(spec.key_columns)
        sandbox_lookup = DatabaseMappingService.create_job_lookup(
            sandbox_rows, spec.key_columns, "sandbox"
        )
        sandbox_values = {
            key: _pick(row, spec.target_columns, "sandbox rows")
            for key, row in sandbox_lookup.items()
        }
        reads = (*spec.key_columns, *(m.source for m in spec.field_mappings))
        production: list[tuple[Any, ...]] = []
        seen: set[Key] = set()
        for row in prod_rows:
            values = _pick(_as_mapping(row), reads, "production rows")
            key = values[:width]
            if any(part is None for part in key):
                continue
            if key in seen:
                where = "the production rows"
                raise NonUniqueKeyError(non_unique_message(where, spec.key_columns, key))
            seen.add(key)
            production.append(values)
        statistics = MappingStatistics()
        results = list(plan_against_lookup(production, sandbox_values, spec, statistics))
        statistics.sandbox_rows = len(sandbox_values)
        statistics.not_found_in_production = len(sandbox_values.keys() - seen)
        return results, statistics

    @staticmethod
    def apply_field_updates(
        engine: Engine,
        results: Iterable[JobMappingResult],
        dry_run: bool = True,
        log_callback: LogCallback | None = None,
        table: str = "jobs",
        key_columns: Sequence[str] = DEFAULT_KEY_COLUMNS,
    ) -> FieldUpdateSummary:
        """Write the planned changes to the sandbox in one transaction, set-based.

        Rows the sandbox refuses (constraint, range) are isolated and reported;
        every other row is written. A row already equal is not rewritten.
        ``log_callback`` gets one line per change (and per refused row).
        """
        say = log_callback or (lambda line: None)
        pending = [result for result in results if result.changes]
        if dry_run:
            for result in pending:
                for change in result.changes:
                    say(_change_line(result, change, dry_run=True))
            return FieldUpdateSummary(dry_run=True, planned=len(pending), updated=0)
        if not pending:
            return FieldUpdateSummary(dry_run=False, planned=0, updated=0)
        keys = tuple(key_columns)
        groups: dict[tuple[str, ...], list[tuple[Key, list[Any]]]] = {}
        for result in pending:
            if len(result.key) != len(keys):
                raise ConfigurationError(
                    f"key {result.label} has {len(result.key)} parts but key_columns has "
                    f"{len(keys)} ({', '.join(keys)})"
                )
            fields = tuple(change.field for change in result.changes)
            groups.setdefault(fields, []).append(
                (result.key, [change.new for change in result.changes])
            )
        updated: set[Key] = set()
        failures: list[RowFailure] = []
        with driver_connection(engine) as conn:
            info = table_info(conn, table, engine, "sandbox")
            require_columns(info, (*keys, *(f for fields in groups for f in fields)), engine)
            prove_unique(conn, info, keys)  # an ambiguous key would update several rows
            try:
                # One transaction; each batch a savepoint, so a refused row is bisected out.
                with conn.transaction():
                    for fields, rows in groups.items():
                        outcome = apply_values(conn, info, keys, fields, rows)
                        updated.update(outcome.updated)
                        failures.extend(outcome.failures)
            except psycopg.Error as error:
                raise translate_error(error, "sandbox", f"updating {info.name}") from None
        failed = {failure.key for failure in failures}
        for result in pending:
            if result.key in updated and result.key not in failed:
                for change in result.changes:
                    say(_change_line(result, change, dry_run=False))
        for failure in failures:
            say(_failure_line(failure))
        return FieldUpdateSummary(
            dry_run=False, planned=len(pending), updated=len(updated), failures=tuple(failures)
        )

    @staticmethod
    def get_job_by_key(
        engine: Engine,
        job: Any,
        release: Any,
        columns: Sequence[str] | None = None,
        table: str = "jobs",
    ) -> dict[str, Any] | None:
        """The row with this ``(job, release)`` as a dict (all columns by default), or None."""
        key_columns = DEFAULT_KEY_COLUMNS
        with driver_connection(engine) as conn:
            info = table_info(conn, table, engine, "production")
            wanted = tuple(columns) if columns is not None else tuple(info.columns)
            require_columns(info, (*key_columns, *wanted), engine)
            rows = read_by_keys(conn, info, key_columns, wanted, [(job, release)])
        if len(rows) > 1:
            raise PermanentError(
                f"{len(rows)} rows in {info.name} have the key {format_key((job, release))}"
            )
        if not rows:
            return None
        return dict(zip(wanted, rows[0][len(key_columns) :], strict=True))

    @staticmethod
    def update_job_fields(
        engine: Engine,
        job: Any,
        release: Any,
        updates: Mapping[str, Any],
        dry_run: bool = False,
        table: str = "jobs",
    ) -> bool:
        """Set fields of one row; True when a value really changed (or would, on a dry run).

        Fields already equal are not rewritten. A value the table refuses raises
        ``PermanentError`` naming the key; a key with no row raises too.
        """
        if not updates:
            return False
        key_columns = DEFAULT_KEY_COLUMNS
        fields = tuple(updates)
        overlap = set(fields) & set(key_columns)
        if overlap:
            raise ConfigurationError(f"key columns cannot be updated: {sorted(overlap)}")
        key: Key = (job, release)
        with driver_connection(engine) as conn:
            info = table_info(conn, table, engine, "sandbox")
            require_columns(info, (*key_columns, *fields), engine)
            current = read_by_keys(conn, info, key_columns, fields, [key])
            if not current:
                raise PermanentError(f"no row in {info.name} has the key {format_key(key)}")
            differs = any(
                not values_equal(updates[f], old)
                for f, old in zip(fields, current[0][len(key_columns) :], strict=True)
            )
            if dry_run or not differs:
                return differs
            outcome = apply_values(conn, info, key_columns, fields, [(key, list(updates.values()))])
        if outcome.failures:
            raise PermanentError(_failure_line(outcome.failures[0]))
        return bool(outcome.updated)


def _seed_settings() -> Settings:
    """The seed's defaults (``public.jobs``, ``(job, release)``, ``fab_order``), env not read."""
    return Settings.model_construct()


def map_production_fab_order_to_sandbox(
    production_engine: Engine,
    sandbox_engine: Engine,
    dry_run: bool = True,
    log_callback: LogCallback | None = None,
    settings: Settings | None = None,
) -> MappingStatistics:
    """One call: compare every production row with the sandbox and (unless dry run) converge.

    This is ``propagator reconcile``: a checksum compare where it applies (a
    streaming merge of both tables otherwise), then every difference converged
    through the same path as the daemon (production re-read, only real
    differences written, refused rows isolated). ``settings`` chooses tables,
    keys, mappings and filter; None means the seed's defaults.
    ``log_callback`` gets one line per change and per refused row.
    """
    settings = settings or _seed_settings()
    say = log_callback or (lambda line: None)

    def planned(result: JobMappingResult) -> None:
        for change in result.changes:
            say(_change_line(result, change, dry_run=True))

    def applied(_: Connection, results: Sequence[JobMappingResult], __: str) -> None:
        for result in results:
            for change in result.changes:
                say(_change_line(result, change, dry_run=False))

    report = run_reconcile(
        settings,
        apply=not dry_run,
        source="manual",
        on_applied=None if dry_run or log_callback is None else applied,
        method="auto",
        on_difference=planned if dry_run and log_callback is not None else None,
        databases=_engine_databases(production_engine, sandbox_engine),
    )
    for failure in report.statistics.failures:
        say(_failure_line(failure))
    return report.statistics


def _engine_databases(production_engine: Engine, sandbox_engine: Engine) -> Databases:
    """The engines' pools as a reconcile's databases (each connection given back after)."""
    engines = {"production": production_engine, "sandbox": sandbox_engine}
    return Databases(
        lambda side: driver_connection(engines[side]),
        describe_engine(production_engine),
        describe_engine(sandbox_engine),
    )
