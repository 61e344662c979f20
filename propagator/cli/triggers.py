"""``propagator triggers install | uninstall | status | sql``: the production change triggers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from propagator.adapters.connections import Connection, open_connection
from propagator.errors import ConfigurationError, ExitCode
from propagator.services import triggers
from propagator.settings import Settings, load_settings

__all__ = ["register", "run"]


def register(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "triggers",
        parents=[common],
        help="install, inspect or remove the change triggers on the production table",
        description=(
            "Manage the statement-level triggers that NOTIFY the daemon of changed keys. "
            "Exit codes: 0 ok, 1 not current (status --check), 2 configuration or "
            "permission error, 3 database unreachable."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "install",
        parents=[common],
        help="install or upgrade the triggers (idempotent, one transaction)",
    )
    actions.add_parser("uninstall", parents=[common], help="remove the triggers and their function")
    status = actions.add_parser(
        "status", parents=[common], help="show what is installed and whether it is current"
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.add_argument(
        "--check", action="store_true", help="exit 1 unless the current version is installed"
    )
    show = actions.add_parser(
        "sql",
        parents=[common],
        help="print the install SQL for a DBA to review or apply (runs nothing)",
    )
    show.add_argument("--uninstall", action="store_true", help="print the removal SQL instead")
    show.add_argument(
        "--compare-as-jsonb",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a watched column whose type has no '=' (json, point, xml): compare it as jsonb; "
        "repeat for several (install finds them itself; the script refuses to run without)",
    )
    return "triggers"


def _open(settings: Settings, action: str) -> Connection:
    return open_connection(settings, "production", f"triggers {action}")


def _describe(settings: Settings) -> str:
    columns = ", ".join(settings.mapping_spec.watched_columns)
    return f"version {triggers.TRIGGER_VERSION}, channel {settings.channel}, watching {columns}"


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


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.action == "sql":
        if args.uninstall:
            print(triggers.render_uninstall_sql(settings), end="")
            return ExitCode.OK
        watched = settings.mapping_spec.watched_columns
        unknown = [c for c in args.compare_as_jsonb if c not in watched]
        if unknown:
            raise ConfigurationError(
                f"--compare-as-jsonb {unknown[0]!r} is not a watched column "
                f"(watched: {', '.join(watched)})"
            )
        script = triggers.render_install_sql(settings, compare_as_jsonb=args.compare_as_jsonb)
        print(script, end="")
        return ExitCode.OK
    with _open(settings, args.action) as conn:
        if args.action == "install":
            triggers.install(conn, settings)
            print(
                f"✓ triggers installed on {settings.production_table_name} ({_describe(settings)})"
            )
            return ExitCode.OK
        if args.action == "uninstall":
            triggers.uninstall(conn, settings)
            print(f"✓ triggers removed from {settings.production_table_name}")
            return ExitCode.OK
        state = triggers.status(conn, settings)
    if args.format == "json":
        print(json.dumps(state.as_dict(), indent=2))
    else:
        _print_status(state)
    if args.check and not state.current:
        return ExitCode.DIFFERENCES_FOUND
    return ExitCode.OK
