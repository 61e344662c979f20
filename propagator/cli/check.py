"""``propagator check``: settings, connectivity and both tables' columns, writing nothing."""

from __future__ import annotations

import argparse
import json

from propagator.errors import ExitCode
from propagator.services.sync import SyncSession
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
    print(f"✓ key columns: {', '.join(context.spec.key_columns)}")
    for mapping in context.spec.field_mappings:
        source = context.production.columns[mapping.source].type_sql
        target = context.sandbox.columns[mapping.target].type_sql
        print(f"✓ mapping {mapping.describe()}: {source} → {target}")
    return ExitCode.OK
