"""``propagator check``: settings, connectivity and both tables' columns, writing nothing.

With ``[[mappings]]`` each selected mapping is checked under its name; one that
fails is reported on its line and the others are still checked.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from propagator.cli.per_mapping import run_each, worst
from propagator.errors import ExitCode
from propagator.services.sync import SyncSession
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
    return worst(outcome.exit_code(int) for outcome in outcomes)


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
