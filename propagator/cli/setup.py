"""``propagator setup``: create or upgrade the sync history schema in the sandbox.

Idempotent: a second run finds everything in place and says so. The daemon runs
the same step at start when history is enabled, so this command is for
deployments that prepare the database ahead of time (or with another role).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from propagator.errors import ExitCode
from propagator.services.history import History, migrations
from propagator.services.sync import SyncSession
from propagator.settings import load_settings

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    history = History(settings)
    if not history.enabled:
        outcome: dict[str, Any] = {
            "history_enabled": False,
            "message": "history is disabled (PROPAGATOR_HISTORY_ENABLED=false): nothing to set up",
        }
    else:
        with SyncSession(settings, purpose="setup") as session:
            result = history.setup(session.open_sandbox())
        assert result is not None
        outcome = {
            "history_enabled": True,
            "schema": result.schema,
            "version": result.version,
            "latest_version": len(migrations()),
            "created_schema": result.created_schema,
            "applied": [f"{m.version:04d}_{m.name}" for m in result.applied],
            "message": result.describe(),
        }
    if args.format == "json":
        print(json.dumps(outcome, indent=2))
    else:
        print(outcome["message"])
    return ExitCode.OK
