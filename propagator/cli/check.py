"""``propagator check``: settings, connectivity and both tables' columns, writing nothing."""

from __future__ import annotations

import argparse
import json

from propagator.errors import ExitCode
from propagator.services.sync import SyncSession
from propagator.services.typefit import check_mappings
from propagator.settings import load_settings

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.show_settings:
        print(json.dumps(settings.describe(), indent=2, default=str))
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
