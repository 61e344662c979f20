"""``propagator triggers install | uninstall | status | sql``: the production change triggers."""

from __future__ import annotations

import argparse
import json

from propagator.adapters.connections import Connection, open_connection
from propagator.errors import ConfigurationError, ExitCode
from propagator.services import triggers
from propagator.settings import Settings, load_settings

__all__ = ["run"]


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
