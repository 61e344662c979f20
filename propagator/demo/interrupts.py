"""Ctrl-C and SIGTERM during ``propagator demo``, handled by phase."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal

__all__ = ["Interrupts"]


class Interrupts:
    """Ctrl-C and SIGTERM, handled by phase.

    ``abort`` raises KeyboardInterrupt (cleanup runs in ``finally``); ``defer``
    remembers the signal until a step that must not be cut in half (starting a
    server) is over; ``graceful`` turns the first signal into a request to end
    the live stream with a summary, and a second one into an abort.
    """

    def __init__(self) -> None:
        self.mode: Literal["abort", "defer", "graceful", "ignore"] = "abort"
        self.requested = False
        self._pending = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.mode == "ignore":
            return
        if self.mode == "defer":
            self._pending = True
            return
        if self.mode == "graceful" and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        previous, self.mode = self.mode, "defer"
        try:
            yield
        finally:
            self.mode = previous
        if self._pending:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def graceful(self) -> Iterator[None]:
        previous, self.mode, self.requested = self.mode, "graceful", False
        try:
            yield
        finally:
            self.mode = previous
