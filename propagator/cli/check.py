"""``propagator check``: settings, connectivity and both tables' columns, writing nothing.

With ``[[mappings]]`` each selected mapping is checked under its name; one that
fails is reported on its line and the others are still checked. With
``capture = "logical"`` each production database's capture is checked after the
mappings: the server and role, the publication and the slot; anything short of
what ``propagator capture install`` makes is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from propagator.adapters.connections import open_connection
from propagator.cli.per_mapping import heading, report_error, run_each, worst
from propagator.errors import ExitCode, PropagatorError, SettingsMismatchError
from propagator.services import capture
from propagator.services.capture import LogicalTarget
from propagator.services.capture_plan import server_problems
from propagator.services.sync import SyncSession
from propagator.services.trigger_tables import load_watched_tables
from propagator.services.typefit import check_mappings
from propagator.settings import MAPPING_KEYS, Configuration, Settings, load_configuration

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    configuration = load_configuration(args.config, selection=args.mappings)
    if args.show_settings:
        print(json.dumps(configuration.settings.describe(), indent=2, default=str))
        if configuration.named:
            print(json.dumps(_mapping_settings(configuration), indent=2, default=str))
    outcomes = run_each(configuration, _check)
    codes = [outcome.exit_code(int) for outcome in outcomes]
    if configuration.settings.capture == "logical":
        codes.extend(_check_logical_capture(args, configuration))
    return worst(codes)


def _mapping_settings(configuration: Configuration) -> dict[str, Any]:
    """Per selected mapping, what it sets or resolves unlike the top level (URLs masked).

    Every other setting is the top-level one shown above.
    """
    top = configuration.settings.describe()
    shown: dict[str, Any] = {}
    for mapping in configuration.mappings:
        resolved = mapping.describe()
        shown[mapping.mapping_name] = {
            key: value
            for key, value in resolved.items()
            if key in MAPPING_KEYS or value != top.get(key)
        }
    return {"mappings": shown}


def _check(settings: Settings) -> int:
    """One mapping: both databases, its key and its columns; the exit code it earns."""
    with SyncSession(settings, purpose="check") as session:
        session.open_production()
        print(f"✓ production: {session.describe_production()}")
        session.open_sandbox()
        print(f"✓ sandbox: {session.describe_sandbox()}")
        context = session.prepare()
    proofs = "; ".join(proof.describe() for proof in context.key_proofs)
    print(f"✓ key columns: {', '.join(context.spec.key_columns)} ({proofs})")
    # A mapping no value can cross is a settings error (2); values that a narrowing
    # sandbox column cannot hold are rows a reconcile would not write (4, as there).
    checks = check_mappings(settings, context)
    for mapping_check in checks:
        print(mapping_check.line())
    if any(mapping_check.impossible for mapping_check in checks):
        return ExitCode.USAGE
    if any(mapping_check.misfits for mapping_check in checks):
        return ExitCode.ROWS_FAILED
    return ExitCode.OK


def _capture_lines(state: capture.CaptureStatus) -> list[str]:
    plan = state.plan
    facts, slot = plan.facts, plan.slot
    attribute = "superuser" if facts.superuser else "with REPLICATION"
    tables = ", ".join(
        f"{t.table} ({'whole rows' if t.columns is None else ', '.join(t.columns)})"
        for t in plan.wanted
    )
    lines = [
        f"✓ capture: logical on database {facts.database} (PostgreSQL {facts.version}, "
        f"wal_level {facts.wal_level}, max_slot_wal_keep_size "
        f"{facts.max_slot_wal_keep_size}, role {facts.role}, {attribute})",
        f"✓ publication {plan.target.publication}: {tables}",
    ]
    if slot is not None:
        lines.append(
            f"✓ replication slot {slot.name}: {slot.plugin}, wal_status {slot.wal_status}, "
            f"{slot.retained_bytes} bytes of WAL retained, confirmed up to "
            f"{slot.confirmed_flush_lsn}"
        )
    return lines


def _check_target(target: LogicalTarget) -> int:
    """One production database's logical capture: lines when ready, else one error."""
    with open_connection(target.settings, "production", "check", autocommit=True) as conn:
        state = capture.status(conn, target)
    if state.problems:
        fixable = not any(server_problems(state.plan.facts))
        hint = "; run `propagator capture install`" if fixable else ""
        raise SettingsMismatchError(
            f"logical capture is not ready: {'; '.join(state.problems)}{hint}"
        )
    for line in _capture_lines(state):
        print(line)
    return ExitCode.OK


def _check_logical_capture(args: argparse.Namespace, configuration: Configuration) -> list[int]:
    """Each production database's capture; without [[mappings]] an error ends the command."""
    targets = capture.logical_targets(load_watched_tables(args.config, args.mappings))
    if not configuration.named:
        return [_check_target(target) for target in targets]
    codes = []
    for target in targets:
        print()
        print(heading(f"capture on {target.label}"), flush=True)
        try:
            codes.append(_check_target(target))
        except PropagatorError as error:
            report_error(f"capture on {target.label}", error)
            codes.append(error.exit_code)
    return codes
