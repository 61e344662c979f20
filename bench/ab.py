"""Run one benchmark script on an older commit and on this tree, alternately, in one invocation.

    python bench/ab.py --old e07fcf3 --rounds 3 event_path.py --rows 100000 --duration 20
    python bench/ab.py --old e07fcf3 --new HEAD --rounds 2 reconcile.py --rows 1000000 --runs 3
    python bench/ab.py --old e80fd59 --rounds 2 reconcile_peers.py --rows 1000000 --runs 3

A refactor must not move the figures. The older commit (and ``--new``, else
this working tree) is exported with ``git archive`` into a temporary folder and
each round runs the script of each tree (the older first in odd rounds, the
newer first in even ones) as a
child process whose ``propagator`` is that tree's. The figures every run prints
are collected and their medians printed side by side with the ratio this/older.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_NUMBER = r"(-?[\d,]+(?:\.\d+)?)"
# event_path.py: "label<spaces>figure   beside" lines of its report.
_EVENT_LINE = re.compile(rf"^(\S.{{10,}}?)\s{{2,}}{_NUMBER}(?:\s{{3}}|$)")
# reconcile.py: "| rows | diff | tool | wall s | RSS MiB | bytes | speed-up | memory |" rows.
_RECONCILE_ROW = re.compile(r"^\|\s*[\d,]+\s*\|")


def event_path_figures(output: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for line in output.splitlines():
        match = _EVENT_LINE.match(line)
        if match and not line.startswith("median of"):
            figures[match.group(1).strip()] = float(match.group(2).replace(",", ""))
    return figures


def reconcile_figures(output: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for line in output.splitlines():
        if not _RECONCILE_ROW.match(line):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        _rows, diff, tool, seconds, rss, sent = cells[:6]
        tool = "naive" if tool == "naive" else "propagator"
        figures[f"{diff} {tool} wall s"] = float(seconds)
        figures[f"{diff} {tool} peak RSS MiB"] = float(rss)
        figures[f"{diff} {tool} bytes from servers"] = float(sent.replace(",", ""))
    return figures


# reconcile_peers.py: "| diff | propagator s | reladiff s (threads) | ratio | floor s | ..." rows
# and "  command   12.3 ms  (...)" start-up lines.
_PEERS_ROW = re.compile(r"^\|\s*(0|[\d,]+%?)\s*\|\s*[\d.]+\s*\|")
# ... and its "| 0 cpu | 0.123 | ..." rows of each server's CPU seconds.
_PEERS_CPU_ROW = re.compile(r"^\|\s*(0|[\d,]+%?) cpu\s*\|")
_PEERS_CPU_COLUMNS = (
    "production CPU s: propagator",
    "production CPU s: reladiff",
    "production CPU: reladiff / propagator",
    "sandbox CPU s: propagator",
    "sandbox CPU s: reladiff",
)
_PEERS_START = re.compile(r"^  (\S.*?)\s{2,}([\d.]+) ms\b")
_PEERS_COLUMNS = (
    "propagator s",
    "reladiff s",
    "reladiff / propagator",
    "floor s",
    "propagator / (floor + python -c pass)",
)


def reconcile_peers_figures(output: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    for line in output.splitlines():
        if _PEERS_ROW.match(line):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for name, cell in zip(_PEERS_COLUMNS, cells[1:6], strict=True):
                figures[f"{cells[0]}: {name}"] = float(cell.split()[0])
        elif _PEERS_CPU_ROW.match(line):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for name, cell in zip(_PEERS_CPU_COLUMNS, cells[1:6], strict=True):
                figures[f"{cells[0]}: {name}"] = float(cell)
        elif match := _PEERS_START.match(line):
            figures[f"start-up: {match.group(1)} ms"] = float(match.group(2))
    return figures


EXTRACTORS: dict[str, Callable[[str], dict[str, float]]] = {
    "event_path.py": event_path_figures,
    "reconcile.py": reconcile_figures,
    "reconcile_peers.py": reconcile_peers_figures,
}


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision``, with sql/ reachable as propagator.sql as an install maps it."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "propagator" / "sql").symlink_to(into / "sql", target_is_directory=True)
    return into


def run(tree: Path, script: str, arguments: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run(
        [sys.executable, str(tree / "bench" / script), *arguments],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{script} in {tree} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--old", required=True, help="the older commit (any git revision)")
    parser.add_argument("--new", help="the newer commit (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("script", choices=sorted(EXTRACTORS))
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    extract = EXTRACTORS[args.script]
    collected: dict[str, dict[str, list[float]]] = {
        "old": defaultdict(list),
        "new": defaultdict(list),
    }
    with tempfile.TemporaryDirectory(prefix="propagator-ab-") as folder:
        folders = (Path(folder) / "old", Path(folder) / "new")
        trees = {
            "old": export(args.old, folders[0]),
            "new": export(args.new, folders[1]) if args.new else REPO,
        }
        for round_number in range(1, args.rounds + 1):
            order = ("old", "new") if round_number % 2 else ("new", "old")
            for which in order:
                figures = extract(run(trees[which], args.script, args.arguments))
                for name, value in figures.items():
                    collected[which][name].append(value)
                print(f"round {round_number}: {which} done", file=sys.stderr, flush=True)
    old = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.old],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"{args.script} {' '.join(args.arguments)}: medians of {args.rounds} rounds")
    new = args.new or "this tree"
    print(
        f"| figure | {old} | {new} | {new} / {old} | {old} each round | {new} each round |\n"
        "|---|---:|---:|---:|---|---|"
    )
    for name, values in collected["old"].items():
        before = statistics.median(values)
        after = statistics.median(collected["new"].get(name, [float("nan")]))
        ratio = f"{after / before:.2f}" if before else "-"
        each = [", ".join(f"{v:,.6g}" for v in collected[w].get(name, [])) for w in ("old", "new")]
        print(f"| {name} | {before:,.2f} | {after:,.2f} | {ratio} | {each[0]} | {each[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
