"""Whether each mapping's sandbox column can hold production's values, decided and counted.

``decisions`` applies ``core.typefit`` to the two tables' declared types;
``refuse_impossible`` stops a reconcile before anything is read when a mapping
can never be stored; ``fit_checks`` gives the planning the per-value checks of
the narrowing mappings only (None when there are none, so the compare pays
nothing); ``count_misfits`` counts on production, with the production filter,
the values a narrowing sandbox column cannot hold, by the same rule as
``core.typefit.fits``.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.connections import Connection, open_connection, translate_error
from propagator.adapters.parameters import filter_condition
from propagator.adapters.tables import key_order, table_identifier
from propagator.core.mapping import FieldMapping, Key, format_key
from propagator.core.plan import FitChecks
from propagator.core.segments import PYTHON_WHITESPACE
from propagator.core.transforms import NamedTransform
from propagator.core.typefit import ColumnType, Family, TypeDecision, Verdict, decide, parse_type
from propagator.errors import SettingsMismatchError
from propagator.services.context import SyncContext
from propagator.settings import Settings

__all__ = [
    "MappingCheck",
    "MisfitCount",
    "check_mappings",
    "count_misfits",
    "decisions",
    "describe_types",
    "fit_checks",
    "refuse_impossible",
]


@dataclass(frozen=True, slots=True)
class MisfitCount:
    """How many production values (after the filter) a sandbox column cannot hold."""

    total: int
    misfits: int
    examples: tuple[tuple[Key, Any], ...]


def _transform_name(mapping: FieldMapping) -> str | None:
    if mapping.transform is None:
        return None
    if isinstance(mapping.transform, NamedTransform):
        return mapping.transform.name
    return "()"


def decisions(context: SyncContext) -> list[tuple[FieldMapping, TypeDecision]]:
    """The verdict of every field mapping, in mapping order."""
    return [
        (
            mapping,
            decide(
                parse_type(context.production.columns[mapping.source].type_sql),
                parse_type(context.sandbox.columns[mapping.target].type_sql),
                _transform_name(mapping),
            ),
        )
        for mapping in context.spec.field_mappings
    ]


def describe_types(context: SyncContext, mapping: FieldMapping) -> str:
    """``mapping a -> b: numeric(12,2) → numeric(6,2)``."""
    source = context.production.columns[mapping.source].type_sql
    target = context.sandbox.columns[mapping.target].type_sql
    return f"mapping {mapping.describe()}: {source} → {target}"


def refuse_impossible(context: SyncContext) -> None:
    """Refuse the first mapping no value can cross, if any: exit 2 for a command; the
    daemon reports it and retries slowly (someone may fix the column or the settings)."""
    for mapping, decision in decisions(context):
        if decision.verdict is Verdict.IMPOSSIBLE:
            raise SettingsMismatchError(
                f"{describe_types(context, mapping)} cannot be stored: {decision.reason}"
            )


def fit_checks(context: SyncContext) -> FitChecks:
    """Per mapping, the check of a narrowing sandbox column; None when no mapping narrows."""
    checks = [decision.check() for _, decision in decisions(context)]
    return checks if any(check is not None for check in checks) else None


def _value_expression(mapping: FieldMapping, source: ColumnType) -> sql.Composable | None:
    """The production value after its transform, in SQL (None: a callable transform)."""
    column = sql.Identifier(mapping.source)
    name = _transform_name(mapping)
    if name == "()":
        return None
    if name == "float":
        return sql.SQL("({}::float8)").format(column)
    if name == "int" and source.family is not Family.INTEGER:
        return sql.SQL("trunc({}::numeric)").format(column)
    if name == "text":
        return sql.SQL("({}::text)").format(column)
    if name in ("strip", "blank_to_null") and source.family is Family.TEXT:
        # Blank becomes NULL, which always fits; otherwise only the surrounding space goes.
        return sql.SQL("btrim({}, {})").format(column, sql.Literal(PYTHON_WHITESPACE))
    # No transform, decimal, and upper/lower (which keep the length of the text).
    return column


def _misfit_condition(
    value: sql.Composable, kind: ColumnType, target: ColumnType
) -> sql.Composable:
    """True where ``value`` (of type ``kind``) cannot be stored in ``target``: ``fits`` in SQL."""
    if target.family is Family.TEXT:
        return sql.SQL("char_length(rtrim(({})::text, ' ')) > {}").format(
            value, sql.Literal(target.size)
        )
    # A float is sent as its shortest text, which is the number the sandbox reads.
    as_number = "({}::float8::text::numeric)" if kind.family is Family.FLOAT else "({}::numeric)"
    number = sql.SQL(as_number).format(value)
    if target.family is Family.NUMERIC:
        room = (target.size or 0) - target.scale
        return sql.SQL(
            "({n} <> 'NaN' AND abs(round({n}, {s})) >= power(10::numeric, {room}))"
        ).format(n=number, s=sql.Literal(target.scale), room=sql.Literal(room))
    low, high = -(2 ** ((target.size or 64) - 1)), 2 ** ((target.size or 64) - 1) - 1
    return sql.SQL("(scale({n}) > 0 OR NOT ({n} BETWEEN {low} AND {high}))").format(
        n=number, low=sql.Literal(low), high=sql.Literal(high)
    )


def count_misfits(
    conn: Connection,
    context: SyncContext,
    mapping: FieldMapping,
    decision: TypeDecision,
    limit: int = 3,
) -> MisfitCount | None:
    """Count, on production, the values a narrowing sandbox column cannot hold, with examples.

    None when the mapping does not narrow (a pair not checked is not counted either)
    or its transform has no SQL form.
    """
    source = parse_type(context.production.columns[mapping.source].type_sql)
    value = _value_expression(mapping, source)
    if decision.verdict is not Verdict.NARROWS or value is None or decision.value is None:
        return None
    misfit = _misfit_condition(value, decision.value, decision.target)
    table = table_identifier(context.production.name)
    where = (
        filter_condition(context.production_filter)
        if context.production_filter
        else sql.SQL("true")
    )
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in context.spec.key_columns)
    counts = sql.SQL("SELECT count({v}), count(*) FILTER (WHERE {m}) FROM {t} WHERE {w}").format(
        v=value, m=misfit, t=table, w=where
    )
    examples = sql.SQL("SELECT {k}, {v} FROM {t} WHERE {w} AND {m} ORDER BY {o} LIMIT {n}").format(
        k=keys,
        v=value,
        t=table,
        w=where,
        m=misfit,
        o=key_order(context.production, context.spec.key_columns),
        n=sql.Literal(limit),
    )
    width = context.key_width
    try:
        with conn.transaction():
            row = conn.execute(counts).fetchone()
            total, misfits = (row[0], row[1]) if row is not None else (0, 0)
            found = conn.execute(examples).fetchall() if misfits else []
    except psycopg.Error as error:
        raise translate_error(
            error, "production", f"counting the values of {mapping.source} that do not fit"
        ) from None
    return MisfitCount(
        total, misfits, tuple((tuple(r[:width]), mapping.apply(r[width])) for r in found)
    )


@dataclass(frozen=True, slots=True)
class MappingCheck:
    """One line of ``propagator check``: a mapping, its verdict and, narrowing, the count."""

    described: str  # mapping a -> b: numeric(12,2) → numeric(6,2)
    decision: TypeDecision
    count: MisfitCount | None = None

    @property
    def impossible(self) -> bool:
        return self.decision.verdict is Verdict.IMPOSSIBLE

    @property
    def misfits(self) -> int:
        return self.count.misfits if self.count is not None else 0

    def line(self) -> str:
        verdict, reason, count = self.decision.verdict, self.decision.reason, self.count
        if verdict is Verdict.FITS:
            return f"✓ {self.described}"
        if verdict is Verdict.IMPOSSIBLE:
            return f"✗ {self.described} cannot be stored: {reason}"
        if count is None:
            return f"? {self.described} not checked: {reason}"
        if not count.misfits:
            return f"✓ {self.described} narrows; all {count.total:,} values fit"
        examples = ", ".join(f"{format_key(k)}: {v}" for k, v in count.examples)
        return (
            f"⚠ {self.described} narrows: {count.misfits:,} of {count.total:,} values "
            f"do not fit (e.g. {examples})"
        )


def check_mappings(settings: Settings, context: SyncContext) -> list[MappingCheck]:
    """Every mapping's verdict; narrowing ones counted on production (one connection)."""
    verdicts = decisions(context)
    if not any(decision.check() is not None for _, decision in verdicts):
        return [MappingCheck(describe_types(context, m), d) for m, d in verdicts]
    conn = open_connection(settings, "production", "check")
    try:
        return [
            MappingCheck(describe_types(context, m), d, count_misfits(conn, context, m, d))
            for m, d in verdicts
        ]
    finally:
        with suppress(psycopg.Error):
            conn.close()
