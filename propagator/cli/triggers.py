"""``propagator triggers install | uninstall | status | sql``: the production change triggers.

Triggers belong to production tables: one trigger set per table the selected
mappings read, watching every column any mapping of that table reads. With one
table the output is that table's alone; with several, each table's output
follows a heading naming it and its mappings, and the exit code is the worst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from propagator.adapters.connections import Connection, open_connection
from propagator.cli.per_mapping import report_status
from propagator.core.identifiers import QualifiedName
from propagator.errors import ConfigurationError, ExitCode, PropagatorError
from propagator.services import triggers
from propagator.services.trigger_tables import load_watched_tables
from propagator.settings import WatchedTable

__all__ = ["run"]

T = TypeVar("T")
_Outcome = tuple[WatchedTable, T | PropagatorError]


def _label(name: QualifiedName) -> str:
    """A table name fit for one line (and for a ``--`` comment): control characters escaped."""
    text = str(name)
    return text if text.isprintable() else json.dumps(text)


def _heading(table: WatchedTable) -> str:
    return f"{_label(table.table)} (mappings: {', '.join(table.names)})"


def _describe(spec: triggers.TriggerSpec) -> str:
    columns = ", ".join(spec.watched_columns)
    return f"version {triggers.TRIGGER_VERSION}, channel {spec.channel}, watching {columns}"


def _print_status(state: triggers.TriggerStatus) -> None:
    if not state.installed:
        print(f"✗ no propagator triggers on {state.table}")
        return
    mark = "✓" if state.current else "✗"
    print(f"{mark} triggers on {state.table}: {'current' if state.current else 'NOT current'}")
    print(f"  version:   {state.version} (this release: {triggers.TRIGGER_VERSION})")
    print(f"  channel:   {state.channel}")
    print(f"  keys:      {', '.join(state.key_columns)}")
    print(f"  watching:  {', '.join(state.watched_columns)}")
    print(f"  functions: {', '.join(state.functions) or '(none)'}")
    print(f"  triggers:  {', '.join(state.triggers) or '(none)'}")
    for problem in state.problems:
        print(f"  ! {problem}")
    if not state.current:
        print("  run `propagator triggers install` to bring it up to date")


def _sql(args: argparse.Namespace, tables: Sequence[WatchedTable]) -> int:
    """Every table's script, each complete on its own; a heading comment when there are several.

    A table with a production filter is the one case that reads production: which
    columns the filter reads (to watch them too) is asked of its catalog.
    """
    specs = [triggers.trigger_spec(table) for table in tables]
    if not args.uninstall and any(spec.filters for spec in specs):
        with _connections("sql") as connections:
            specs = [
                triggers.with_filter_columns(connections.to(table), spec) if spec.filters else spec
                for table, spec in zip(tables, specs, strict=True)
            ]
    if not args.uninstall:
        watched = list(dict.fromkeys(c for spec in specs for c in spec.watched_columns))
        unknown = [c for c in args.compare_as_jsonb if c not in watched]
        if unknown:
            raise ConfigurationError(
                f"--compare-as-jsonb {unknown[0]!r} is not a watched column "
                f"(watched: {', '.join(watched)})"
            )
    scripts = []
    for table, spec in zip(tables, specs, strict=True):
        if args.uninstall:
            script = triggers.render_uninstall_sql(spec)
        else:
            own = [c for c in args.compare_as_jsonb if c in spec.watched_columns]
            script = triggers.render_install_sql(spec, compare_as_jsonb=own)
        scripts.append(script if len(tables) == 1 else f"-- {_heading(table)}\n{script}")
    print("\n".join(scripts), end="")
    return ExitCode.OK


class _Connections:
    """One production connection per server, opened when first needed; a failure is kept."""

    def __init__(self, stack: contextlib.ExitStack, action: str) -> None:
        self._stack = stack
        self._action = action
        self._open: dict[str, Connection | PropagatorError] = {}

    def to(self, table: WatchedTable) -> Connection:
        if table.production_url not in self._open:
            try:
                conn = open_connection(table.mappings[0], "production", f"triggers {self._action}")
                self._open[table.production_url] = self._stack.enter_context(conn)
            except PropagatorError as error:
                self._open[table.production_url] = error
        opened = self._open[table.production_url]
        if isinstance(opened, PropagatorError):
            raise opened
        return opened


@contextlib.contextmanager
def _connections(action: str) -> Iterator[_Connections]:
    with contextlib.ExitStack() as stack:
        yield _Connections(stack, action)


def _each(
    tables: Sequence[WatchedTable],
    connections: _Connections,
    work: Callable[[Connection, WatchedTable], T],
) -> list[_Outcome[T]]:
    """``work`` on every table; a table's error is its outcome and the others still run."""
    outcomes: list[_Outcome[T]] = []
    for table in tables:
        try:
            outcomes.append((table, work(connections.to(table), table)))
        except PropagatorError as error:
            outcomes.append((table, error))
    return outcomes


def _worst(codes: Sequence[int]) -> int:
    return max(codes, default=ExitCode.OK)


def _report_error(table: WatchedTable, error: PropagatorError) -> int:
    print(f"propagator: error: {_label(table.table)}: {error}", file=sys.stderr)
    return error.exit_code


def _install(tables: Sequence[WatchedTable], connections: _Connections) -> int:
    """Every table's columns checked first; any refusal installs nothing anywhere."""
    planned = _each(tables, connections, triggers.plan_installation)
    refused = [(t, o) for t, o in planned if isinstance(o, PropagatorError)]
    if refused:
        code = _worst([_report_error(table, error) for table, error in refused])
        print(f"✗ no triggers installed: {len(refused)} of {len(tables)} tables refused")
        return code

    codes = []
    for table, installation in planned:
        assert isinstance(installation, triggers.Installation)
        print(_heading(table))
        try:
            triggers.apply_installation(connections.to(table), installation)
        except PropagatorError as error:
            codes.append(_report_error(table, error))
            continue
        print(f"✓ triggers installed on {_label(table.table)} ({_describe(installation.spec)})")
        codes.append(ExitCode.OK)
    return _worst(codes)


def _uninstall(tables: Sequence[WatchedTable], connections: _Connections) -> int:
    codes = []
    for table, outcome in _each(tables, connections, triggers.uninstall):
        print(_heading(table))
        if isinstance(outcome, PropagatorError):
            codes.append(_report_error(table, outcome))
        else:
            print(f"✓ triggers removed from {_label(table.table)}")
            codes.append(ExitCode.OK)
    return _worst(codes)


def _status(
    args: argparse.Namespace, tables: Sequence[WatchedTable], connections: _Connections
) -> int:
    """Each table's status; JSON as a list of per-table objects naming table and mappings."""
    outcomes = _each(tables, connections, triggers.status)
    codes: list[int] = []
    documents: list[dict[str, Any]] = []
    for table, outcome in outcomes:
        head = {"table": str(table.table), "mappings": list(table.names)}
        if args.format != "json":
            print(_heading(table))
        if isinstance(outcome, PropagatorError):
            codes.append(_report_error(table, outcome))
            documents.append({**head, "error": str(outcome)})
            continue
        documents.append({**head, **outcome.as_dict()})
        if args.format != "json":
            _print_status(outcome)
        failed = args.check and not outcome.current
        codes.append(ExitCode.DIFFERENCES_FOUND if failed else ExitCode.OK)
    if args.format == "json":
        print(json.dumps(documents, indent=2))
    return _worst(codes)


def _one_table(args: argparse.Namespace, table: WatchedTable) -> int:
    """One production table: the output and errors of a single table, exactly as ever."""
    with open_connection(table.mappings[0], "production", f"triggers {args.action}") as conn:
        if args.action == "install":
            installation = triggers.plan_installation(conn, table)
            triggers.apply_installation(conn, installation)
            print(f"✓ triggers installed on {table.table} ({_describe(installation.spec)})")
            return ExitCode.OK
        if args.action == "uninstall":
            triggers.uninstall(conn, table)
            print(f"✓ triggers removed from {table.table}")
            return ExitCode.OK
        state = triggers.status(conn, table)
    return report_status(state, args, _print_status)


def run(args: argparse.Namespace) -> int:
    tables = load_watched_tables(args.config, args.mappings)
    if args.action == "sql":
        return _sql(args, tables)
    if len(tables) == 1:
        return _one_table(args, tables[0])
    with _connections(args.action) as connections:
        if args.action == "install":
            return _install(tables, connections)
        if args.action == "uninstall":
            return _uninstall(tables, connections)
        return _status(args, tables, connections)
