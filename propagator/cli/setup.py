"""``propagator setup``: create or upgrade the sync history schema in the sandbox.

Idempotent: a second run finds everything in place and says so. The daemon runs
the same step at start when history is enabled, so this command is for
deployments that prepare the database ahead of time (or with another role).
With ``[[mappings]]`` it sets up each distinct sandbox (URL and history schema)
once, naming the mappings it serves; one that fails does not stop the others.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from propagator.cli.per_mapping import heading, names, report_error, worst
from propagator.core.redact import mask_url
from propagator.errors import ExitCode, PropagatorError
from propagator.services.history import History, migrations
from propagator.services.sync import SyncSession
from propagator.settings import Configuration, Settings, load_configuration

__all__ = ["run"]

_DISABLED = {
    "history_enabled": False,
    "message": "history is disabled (PROPAGATOR_HISTORY_ENABLED=false): nothing to set up",
}


def run(args: argparse.Namespace) -> int:
    configuration = load_configuration(args.config, selection=args.mappings)
    if not configuration.settings.history_enabled:
        _show(dict(_DISABLED), args.format)
        return ExitCode.OK
    if not configuration.named:
        (settings,) = configuration.mappings
        _show(_setup(settings), args.format)
        return ExitCode.OK
    return _setup_each_sandbox(configuration, args.format)


def _setup(settings: Settings) -> dict[str, Any]:
    """Create or upgrade the history schema in the sandbox ``settings`` name."""
    with SyncSession(settings, purpose="setup") as session:
        result = History(settings).setup(session.open_sandbox())
    assert result is not None
    return {
        "history_enabled": True,
        "schema": result.schema,
        "version": result.version,
        "latest_version": len(migrations()),
        "created_schema": result.created_schema,
        "applied": [f"{m.version:04d}_{m.name}" for m in result.applied],
        "message": result.describe(),
    }


def _show(outcome: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(outcome, indent=2))
    else:
        print(outcome["message"])


def _sandboxes(mappings: Sequence[Settings]) -> list[list[Settings]]:
    """The mappings grouped by the history they share: one sandbox URL and schema."""
    grouped: dict[tuple[str, str], list[Settings]] = {}
    for mapping in mappings:
        url = mapping.sandbox_database_url
        place = (url.get_secret_value() if url else "", mapping.history_schema)
        grouped.setdefault(place, []).append(mapping)
    return list(grouped.values())


def _setup_each_sandbox(configuration: Configuration, output: str) -> int:
    """Each distinct sandbox once, under a heading naming the mappings it serves."""
    entries: list[dict[str, Any]] = []
    codes: list[int] = []
    for number, group in enumerate(_sandboxes(configuration.mappings)):
        served = names(group)
        url = group[0].sandbox_database_url
        entry: dict[str, Any] = {
            "mappings": [mapping.mapping_name for mapping in group],
            "sandbox": mask_url(url.get_secret_value()) if url else None,
        }
        if output == "text":
            if number:
                print()
            where = f"{group[0].history_schema} in {entry['sandbox'] or 'an unset sandbox'}"
            print(heading(f"history schema {where} for {served}"), flush=True)
        try:
            entry.update(_setup(group[0]))
        except PropagatorError as error:
            report_error(served, error)
            entry["error"] = str(error)
            codes.append(error.exit_code)
        else:
            codes.append(ExitCode.OK)
            if output == "text":
                print(entry["message"])
        entries.append(entry)
    if output == "json":
        print(json.dumps({"history_enabled": True, "sandboxes": entries}, indent=2))
    return worst(codes)
