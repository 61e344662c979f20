"""Both databases at once: production's call in this thread, the sandbox's in another.

Each side has its own connection, so the two can wait on their servers
together; a command that asks both servers in turn pays every round trip twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["on_both"]

_P = TypeVar("_P")
_S = TypeVar("_S")


def on_both(production: Callable[[], _P], sandbox: Callable[[], _S]) -> tuple[_P, _S]:
    """Run both calls at once and return both results.

    Errors come as if the calls had run in turn: production's first (the
    sandbox's result or error is then dropped), else the sandbox's.
    """
    outcome: list[_S] = []
    failure: list[BaseException] = []

    def run_sandbox() -> None:
        try:
            outcome.append(sandbox())
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=run_sandbox, name="propagator-sandbox", daemon=True)
    thread.start()
    try:
        first = production()
    finally:
        thread.join()
    if failure:
        raise failure[0]
    return first, outcome[0]
