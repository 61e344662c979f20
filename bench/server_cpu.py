"""CPU seconds each PostgreSQL server spends on one command, read from ``/proc``.

A server's CPU is its postmaster's own, that of the children it has reaped
(backends that have exited, parallel workers) and that of its live children.
Read before and after a command, once the command's backends have exited, the
difference is what the command cost that server: a figure that moves far less
than wall-clock time on a noisy machine, and the one a DBA asks about first
("what does this cost production?").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bench.common import median

__all__ = ["ServerCpu", "cpu_table"]

_T = TypeVar("_T")
_TICKS = os.sysconf("SC_CLK_TCK")
_SETTLE_SECONDS = 5.0


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


class ServerCpu:
    """The CPU of the servers whose data folders are given, in their order."""

    def __init__(self, data_dirs: Sequence[Path]) -> None:
        self.postmasters = [
            int((folder / "postmaster.pid").read_text().split()[0]) for folder in data_dirs
        ]

    def _children(self, postmaster: int) -> dict[int, float]:
        found: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            fields = _stat(entry) if entry.isdigit() else None
            if fields is not None and int(fields[1]) == postmaster:  # ppid
                found[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICKS
        return found

    def _own(self, postmaster: int) -> float:
        fields = _stat(postmaster)
        if fields is None:
            raise RuntimeError(f"server process {postmaster} is gone")
        return sum(int(value) for value in fields[11:15]) / _TICKS  # utime stime cutime cstime

    def _total(self, postmaster: int) -> tuple[float, set[int]]:
        """The server's CPU and its live children. A child reaped between reading the
        postmaster and listing its children would be in neither: read until stable."""
        for _ in range(100):
            own = self._own(postmaster)
            children = self._children(postmaster)
            if self._own(postmaster) == own:
                break
        return own + sum(children.values()), set(children)

    def measure(self, command: Callable[[], _T]) -> tuple[_T, list[float]]:
        """Run ``command``; its result and the CPU seconds each server spent meanwhile."""
        before = [self._total(pid) for pid in self.postmasters]
        result = command()
        used = []
        for pid, (cpu_before, children_before) in zip(self.postmasters, before, strict=True):
            deadline = time.monotonic() + _SETTLE_SECONDS
            cpu_after, children = self._total(pid)
            while children - children_before and time.monotonic() < deadline:
                time.sleep(0.005)  # the command's backends are still exiting
                cpu_after, children = self._total(pid)
            used.append(cpu_after - cpu_before)
        return result, used


def cpu_table(levels: Sequence[dict[str, object]]) -> list[str]:
    """Markdown rows: each server's CPU seconds per run, medians, both tools."""
    lines = [
        "| diff (server CPU s) | production: propagator | production: reladiff | "
        "reladiff / propagator | sandbox: propagator | sandbox: reladiff |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        cpu = level["cpu_s"]
        assert isinstance(cpu, dict)
        p, r = median(cpu["propagator production"]), median(cpu["reladiff production"])
        lines.append(
            f"| {level['label']} cpu | {p:.3f} | {r:.3f} | {r / p if p else float('nan'):.2f} | "
            f"{median(cpu['propagator sandbox']):.3f} | {median(cpu['reladiff sandbox']):.3f} |"
        )
    return lines
