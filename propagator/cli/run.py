"""``propagator run``: the always-on daemon that keeps the sandbox converged."""

from __future__ import annotations

import argparse

from propagator.settings import load_settings

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    settings.production_url()  # a missing URL is a configuration error, before anything starts
    settings.sandbox_url()
    # Imported here: every other subcommand would otherwise pay for loading the daemon.
    from propagator.daemon import run_daemon
    from propagator.observability.logging import configure_logging

    configure_logging(settings)
    return run_daemon(settings)
