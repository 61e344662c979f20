"""``propagator capture install | uninstall | status | sql``: the capture source on production.

The kind is the ``capture`` setting, or ``--capture``. ``notify`` is the
triggers: every action does exactly what ``propagator triggers`` does.
``logical`` is one publication and one replication slot per production
database: with one database the output is its own; with several, each follows
a heading naming it and its mappings, and the exit code is the worst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from propagator.adapters.connections import Connection, open_connection
from propagator.adapters.publication import PublishedTable
from propagator.cli import triggers as triggers_command
from propagator.cli.per_mapping import report_error, report_status, worst
from propagator.errors import ExitCode, PropagatorError
from propagator.services import capture
from propagator.services.capture import CaptureStatus, LogicalPlan, LogicalTarget
from propagator.services.trigger_tables import load_watched_tables
from propagator.settings import load_settings

__all__ = ["human_bytes", "print_status", "run"]

T = TypeVar("T")


def human_bytes(count: int) -> str:
    """``1.5 MiB``; below 1 KiB the exact count."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _tables(tables: Sequence[PublishedTable]) -> str:
    return ", ".join(
        f"{t.table} ({'whole rows' if t.columns is None else ', '.join(t.columns)})" for t in tables
    )


def _print_install(outcome: capture.InstallOutcome, target: LogicalTarget) -> None:
    verb = {"created": "created", "updated": "updated", "current": "is current"}
    print(f"✓ publication {target.publication} {verb[outcome.publication]}: ", end="")
    print(_tables(outcome.tables))
    if outcome.slot == "present":
        print(
            f"✓ replication slot {target.slot} already exists "
            f"(pgoutput, confirmed up to {outcome.slot_lsn})"
        )
    elif outcome.slot == "created":
        print(f"✓ replication slot {target.slot} created (pgoutput) at {outcome.slot_lsn}")
    else:
        print(
            f"✓ replication slot {target.slot} had lost WAL it needed (wal_status lost): "
            f"dropped and created again at {outcome.slot_lsn}; changes made before were "
            "missed, so run `propagator reconcile --apply` (the daemon runs one itself)"
        )


def _print_uninstall(outcome: capture.UninstallOutcome, target: LogicalTarget) -> None:
    if outcome.slot_left:
        print(f"! {outcome.slot_left}")
    elif outcome.slot_dropped:
        print(f"✓ replication slot {target.slot} dropped")
    else:
        print(f"✓ no replication slot {target.slot} (nothing to drop)")
    if outcome.publication_dropped:
        print(f"✓ publication {target.publication} dropped")
    else:
        print(f"✓ no publication {target.publication} (nothing to drop)")


def _role(state: CaptureStatus) -> str:
    facts = state.plan.facts
    attribute = "superuser" if facts.superuser else "REPLICATION" if facts.replication else ""
    return f"{facts.role} ({attribute or 'no REPLICATION'})"


def print_status(state: CaptureStatus) -> None:
    """The status as lines: the verdict, what is there, every problem."""
    plan = state.plan
    facts, publication, slot = plan.facts, plan.publication, plan.slot
    mark, verdict = ("✓", "current") if state.current else ("✗", "NOT current")
    print(f"{mark} logical capture on database {facts.database}: {verdict}")
    keep = facts.max_slot_wal_keep_size
    print(f"  server:        PostgreSQL {facts.version}, wal_level {facts.wal_level}, ", end="")
    print(f"max_slot_wal_keep_size {keep}{' (unbounded)' if facts.unbounded else ''}")
    print(f"  role:          {_role(state)}")
    if publication is None:
        print(f"  publication:   {plan.target.publication} (missing)")
    else:
        print(f"  publication:   {publication.name} ({', '.join(publication.events)})")
        for table in publication.tables:
            print(f"    {_tables([table])}")
    if slot is None:
        print(f"  slot:          {plan.target.slot} (missing)")
    else:
        active = f"active, pid {slot.active_pid}" if slot.active else "inactive"
        print(
            f"  slot:          {slot.name} ({slot.plugin}, {active}, wal_status {slot.wal_status})"
        )
        if slot.retained_bytes is not None:
            retained = slot.retained_bytes
            print(f"  retained WAL:  {human_bytes(retained)} ({retained} bytes)")
        print(f"  confirmed:     {slot.confirmed_flush_lsn}")
    for problem in state.problems:
        print(f"  ! {problem}")
    if not state.current:
        print("  run `propagator capture install` to bring it up to date")


def _connect(target: LogicalTarget, action: str) -> Connection:
    return open_connection(target.settings, "production", f"capture {action}", autocommit=True)


def _one(args: argparse.Namespace, conn: Connection, target: LogicalTarget) -> int:
    """One database's action, its errors raised to the caller."""
    if args.action == "install":
        outcome = capture.install(conn, target, allow_unbounded=args.allow_unbounded_slot)
        _print_install(outcome, target)
    elif args.action == "uninstall":
        _print_uninstall(capture.uninstall(conn, target), target)
    elif args.action == "sql":
        print(capture.install_script(conn, target), end="")
    else:
        return report_status(capture.status(conn, target), args, print_status)
    return ExitCode.OK


def _each(
    targets: Sequence[LogicalTarget],
    stack: contextlib.ExitStack,
    action: str,
    work: Callable[[Connection, LogicalTarget], T],
) -> list[tuple[LogicalTarget, T | PropagatorError]]:
    """``work`` on every database; a database's error is its outcome, the others still run."""
    outcomes: list[tuple[LogicalTarget, T | PropagatorError]] = []
    for target in targets:
        try:
            conn = stack.enter_context(_connect(target, action))
            outcomes.append((target, work(conn, target)))
        except PropagatorError as error:
            outcomes.append((target, error))
    return outcomes


def _install_all(args: argparse.Namespace, targets: Sequence[LogicalTarget]) -> int:
    """Every database checked first; any refusal installs nothing anywhere."""
    with contextlib.ExitStack() as stack:

        def checked(conn: Connection, target: LogicalTarget) -> tuple[Connection, LogicalPlan]:
            allow = args.allow_unbounded_slot
            return conn, capture.plan_install(conn, target, allow_unbounded=allow)

        planned = _each(targets, stack, "install", checked)
        refused = [(t, o) for t, o in planned if isinstance(o, PropagatorError)]
        if refused:
            for target, error in refused:
                report_error(target.label, error)
            print(f"✗ nothing installed: {len(refused)} of {len(targets)} databases refused")
            return worst(error.exit_code for _, error in refused)
        codes = []
        for target, outcome in planned:
            assert not isinstance(outcome, PropagatorError)
            conn, plan = outcome
            print(target.label)
            try:
                _print_install(capture.apply_install(conn, plan), target)
                codes.append(ExitCode.OK)
            except PropagatorError as error:
                report_error(target.label, error)
                codes.append(error.exit_code)
        return worst(codes)


def _several(args: argparse.Namespace, targets: Sequence[LogicalTarget]) -> int:
    if args.action == "install":
        return _install_all(args, targets)
    codes: list[int] = []
    documents: list[dict[str, Any]] = []
    json_status = args.action == "status" and args.format == "json"
    for target in targets:
        label = target.label if target.label.isprintable() else json.dumps(target.label)
        if not json_status:
            print(f"-- {label}" if args.action == "sql" else label)
        try:
            with _connect(target, args.action) as conn:
                if json_status:
                    state = capture.status(conn, target)
                    documents.append(state.as_dict())
                    failed = args.check and not state.current
                    codes.append(ExitCode.DIFFERENCES_FOUND if failed else ExitCode.OK)
                else:
                    codes.append(_one(args, conn, target))
        except PropagatorError as error:
            report_error(target.label, error)
            documents.append({"mappings": list(target.names), "error": str(error)})
            codes.append(error.exit_code)
    if json_status:
        print(json.dumps(documents, indent=2))
    return worst(codes)


def _as_triggers(args: argparse.Namespace) -> argparse.Namespace:
    """The same request for ``propagator triggers`` (whose sql takes two more options)."""
    delegated = argparse.Namespace(**vars(args))
    delegated.command = "triggers"
    delegated.uninstall = False
    delegated.compare_as_jsonb = []
    return delegated


def run(args: argparse.Namespace) -> int:
    kind = getattr(args, "capture", None) or load_settings(args.config).capture
    if kind == "notify":
        return triggers_command.run(_as_triggers(args))
    targets = capture.logical_targets(load_watched_tables(args.config, args.mappings))
    if len(targets) > 1:
        return _several(args, targets)
    (target,) = targets
    with _connect(target, args.action) as conn:
        return _one(args, conn, target)
