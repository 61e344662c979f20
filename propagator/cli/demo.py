"""``propagator demo``: the whole product on two throwaway servers, in one command.

Only the arguments live here; the session (servers, daemon, live view) is the
``propagator.demo`` package, imported when the demo runs, so other commands
never pay for importing it. Its packages come with the ``demo`` extra; without
them the demo ends with one line naming the install command (exit 2).
"""

from __future__ import annotations

import argparse

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from propagator.demo import require_extra

    require_extra()
    from propagator.cli.reconcile import execute
    from propagator.demo import session

    return session.run(args, reconcile=execute)
