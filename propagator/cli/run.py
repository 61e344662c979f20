"""``propagator run``: the always-on daemon that keeps the sandbox converged."""

from __future__ import annotations

import argparse
from typing import Any

from propagator.settings import load_settings

__all__ = ["register", "run"]


def register(subparsers: Any, common: argparse.ArgumentParser) -> str:
    subparsers.add_parser(
        "run",
        parents=[common],
        help="run the daemon: listen for production changes and converge the sandbox",
        description=(
            "Listen for change notifications from the production triggers, debounce them and "
            "converge the sandbox, with a catch-up reconcile on every (re)connect and a periodic "
            "full reconcile. Serves /metrics, /healthz, /readyz and /status. Stops gracefully on "
            "SIGTERM or SIGINT. Exit codes: 0 graceful stop, 1 a daemon task failed, "
            "2 configuration error."
        ),
    )
    return "run"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    settings.production_url()  # a missing URL is a configuration error, before anything starts
    settings.sandbox_url()
    # Imported here: every other subcommand would otherwise pay for loading the daemon.
    from propagator.daemon import run_daemon
    from propagator.observability.logging import configure_logging

    configure_logging(settings)
    return run_daemon(settings)
