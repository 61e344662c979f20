"""Benchmark ``propagator reconcile`` against reladiff and the floor, on two local servers.

    python bench/reconcile_peers.py --rows 1000000 --diff 0,100,1% --runs 5

Both servers get ``jobs(job int, release text, fab_order numeric(12,2), primary key
(job, release))`` with the same rows; for every ``--diff`` level the sandbox gets
that many scattered ``fab_order + 1`` rows (the previous level's are undone first).
Every run times, in a rotating order, three things:

* **propagator**: the real CLI, ``python -m propagator reconcile --format json`` (a
  dry run), a child process; the rows it found differing come from its JSON.
* **reladiff**, the peer, as a new user runs it: ``reladiff URL jobs URL jobs -k job
  -k release -c fab_order -a hashdiff -s --json -j THREADS`` from a virtual
  environment of its own (``bench/.venvs/reladiff``, made on first use). THREADS is
  the fastest of ``--reladiff-threads`` in one untimed trial each, per level.
* **the floor**: ``sum(hashtextextended(...))`` over every row, on both servers at
  once (a fresh connection and a thread each, only the query timed); a run's floor
  is the slower server. No tool that reads every row on both sides can beat it.

Each server's CPU seconds for every propagator and reladiff run (``/proc``: the
postmaster's own and its children's, live and exited) come in a second table: what a
reconcile costs production, a figure that moves far less than wall time.

Start-up figures (``python -c pass``, ``import psycopg``, ``propagator --version``,
``reladiff --version``) are medians of ``--startup-runs`` alternating child runs.

propagator runs as installed: its modules are compiled to bytecode first, as ``pip
install`` does for a wheel (the container image). A checkout installed with ``pip
install -e`` under ``PYTHONDONTWRITEBYTECODE=1`` compiles every module it imports at
every start instead; ``--no-compile`` measures that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Measurement,
    differing_ids,
    machine_description,
    median,
    parse_diff,
    run_measured,
    servers,
)
from bench.reladiff_venv import reladiff_executable, reladiff_version
from bench.server_cpu import ServerCpu, cpu_table

DDL = """
CREATE TABLE public.jobs (
    job integer, release text, fab_order numeric(12, 2), PRIMARY KEY (job, release)
)
"""
# Row g (1..N): two releases per job, fab orders with repeats and cents.
LOAD = """
INSERT INTO public.jobs (job, release, fab_order)
SELECT 100000 + (g + 1) / 2, CASE WHEN g %% 2 = 1 THEN 'A' ELSE 'B' END,
       ((g::bigint * 7919) %% 100000) / 100.0
FROM generate_series(1, %(rows)s) AS g
"""
SHIFT = """
UPDATE public.jobs AS j SET fab_order = j.fab_order + %(delta)s
FROM (SELECT 100000 + (g + 1) / 2 AS job, CASE WHEN g %% 2 = 1 THEN 'A' ELSE 'B' END AS release
      FROM generate_series(%(start)s::bigint, %(stop)s::bigint, %(step)s::bigint) AS g) AS d
WHERE j.job = d.job AND j.release = d.release
"""
FLOOR = "SELECT sum(hashtextextended(job::text || release || fab_order::text, 0)) FROM jobs"
PROPAGATOR = [sys.executable, "-m", "propagator"]
_TOOLS = ("propagator", "reladiff")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.jobs")
        conn.execute(DDL)
        conn.execute(LOAD, {"rows": rows})
        conn.execute("VACUUM ANALYZE public.jobs")


def shift(url: str, rows: int, count: int, delta: int) -> None:
    """Add ``delta`` to ``fab_order`` of ``count`` scattered rows, then settle the table."""
    with psycopg.connect(url, autocommit=True) as conn:
        if count:
            ids = differing_ids(rows, count)
            params = {"delta": delta, "start": ids.start, "stop": ids.stop - 1, "step": ids.step}
            updated = conn.execute(SHIFT, params).rowcount
            if updated != count:
                raise SystemExit(f"changed {updated} sandbox rows, expected {count}")
        conn.execute("VACUUM ANALYZE public.jobs")
        conn.execute("CHECKPOINT")


def compile_propagator() -> None:
    """Byte-compile propagator's modules, as ``pip install`` does when it installs a wheel."""
    package = Path(__file__).resolve().parent.parent / "propagator"
    command = [sys.executable, "-m", "compileall", "-q", str(package)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"cannot compile propagator: {done.stdout.strip()[-300:]}")


def environment(urls: tuple[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    env.update(PRODUCTION_DATABASE_URL=urls[0], SANDBOX_DATABASE_URL=urls[1], COLUMNS="1000")
    return env


def checked(tool: str, result: Measurement) -> Measurement:
    if result.returncode != 0:
        raise SystemExit(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    return result


def run_propagator(urls: tuple[str, str]) -> tuple[Measurement, int]:
    command = [*PROPAGATOR, "reconcile", "--dry-run", "--format", "json"]
    result = checked("propagator", run_measured(command, environment(urls)))
    stats = json.loads(result.stdout)["statistics"]
    missing = stats["not_found_in_sandbox"] + stats["not_found_in_production"]
    return result, int(stats["rows_with_differences"]) + int(missing)


def run_reladiff(exe: Path, urls: tuple[str, str], threads: int) -> tuple[Measurement, int]:
    command = [str(exe), urls[0], "jobs", urls[1], "jobs", "-k", "job", "-k", "release"]
    command += ["-c", "fab_order", "-a", "hashdiff", "-s", "--json", "-j", str(threads)]
    result = checked("reladiff", run_measured(command, environment(urls)))
    text = result.stdout.replace("\n", "")  # the console may wrap its JSON line
    stats = json.loads(text[text.index("{") :])
    return result, int(stats["updated"]) + int(stats["exclusive_A"]) + int(stats["exclusive_B"])


def floor(urls: tuple[str, str]) -> float:
    """The hashing pass alone, both servers at once; the slower server's query seconds."""
    barrier = threading.Barrier(len(urls), timeout=60)

    def one(url: str) -> float:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            started = time.perf_counter()
            conn.execute(FLOOR).fetchone()
            return time.perf_counter() - started

    with ThreadPoolExecutor(len(urls)) as pool:
        return max(pool.map(one, urls))


def startup(exe: Path, runs: int) -> dict[str, list[float]]:
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import psycopg": [sys.executable, "-c", "import psycopg"],
        "propagator --version": [*PROPAGATOR, "--version"],
        "reladiff --version": [str(exe), "--version"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(runs):
        names = list(commands)[run % len(commands) :] + list(commands)[: run % len(commands)]
        for name in names:
            seconds[name].append(checked(name, run_measured(commands[name], os.environ)).seconds)
    return seconds


@dataclass
class Level:
    label: str
    differing: int
    threads: int = 0
    thread_trials: dict[int, float] = field(default_factory=dict)
    propagator_s: list[float] = field(default_factory=list)
    propagator_rss_mib: list[float] = field(default_factory=list)
    propagator_found: list[int] = field(default_factory=list)
    reladiff_s: list[float] = field(default_factory=list)
    reladiff_rss_mib: list[float] = field(default_factory=list)
    reladiff_found: list[int] = field(default_factory=list)
    floor_s: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cpu_s: dict[str, list[float]] = field(
        default_factory=lambda: {f"{t} {s}": [] for t in _TOOLS for s in ("production", "sandbox")}
    )


def compare(level: Level, what: str, propagator: int, reladiff: int) -> None:
    if propagator != reladiff or propagator != level.differing:
        warning = (
            f"MISMATCH at {level.label} ({what}): propagator found {propagator}, reladiff "
            f"{reladiff}, {level.differing} rows were changed"
        )
        level.warnings.append(warning)
        say(f"WARNING: {warning}")


def measure(
    level: Level,
    exe: Path,
    urls: tuple[str, str],
    runs: int,
    candidates: list[int],
    cpu: ServerCpu,
) -> None:
    _, found = run_propagator(urls)  # untimed warm-up, as reladiff's trials are
    for threads in candidates:
        result, rfound = run_reladiff(exe, urls, threads)
        level.thread_trials[threads] = result.seconds
        compare(level, f"reladiff -j {threads} trial", found, rfound)
        say(f"  {level.label:>6} trial: reladiff -j {threads:<2} {result.seconds:6.2f} s")
    level.threads = min(level.thread_trials, key=level.thread_trials.__getitem__)
    say(f"  {level.label:>6}: reladiff runs with -j {level.threads}")

    def propagator() -> str:
        (result, found), used = cpu.measure(lambda: run_propagator(urls))
        record_cpu(level, "propagator", used)
        level.propagator_s.append(result.seconds)
        level.propagator_rss_mib.append(result.peak_rss_mib)
        level.propagator_found.append(found)
        return f"propagator {result.seconds:6.2f} s ({found} found)"

    def reladiff() -> str:
        (result, found), used = cpu.measure(lambda: run_reladiff(exe, urls, level.threads))
        record_cpu(level, "reladiff", used)
        level.reladiff_s.append(result.seconds)
        level.reladiff_rss_mib.append(result.peak_rss_mib)
        level.reladiff_found.append(found)
        return f"reladiff {result.seconds:6.2f} s ({found} found)"

    def floor_run() -> str:
        level.floor_s.append(floor(urls))
        return f"floor {level.floor_s[-1]:6.2f} s"

    steps: list[Callable[[], str]] = [propagator, reladiff, floor_run]
    for run in range(runs):
        order = steps[run % 3 :] + steps[: run % 3]  # rotate so no tool always goes first
        say(f"  {level.label:>6} run {run + 1}: " + ", ".join(step() for step in order))
        compare(level, f"run {run + 1}", level.propagator_found[-1], level.reladiff_found[-1])


def record_cpu(level: Level, tool: str, used: list[float]) -> None:
    for side, seconds in zip(("production", "sandbox"), used, strict=True):
        level.cpu_s[f"{tool} {side}"].append(seconds)


def report(
    levels: list[Level], boot: dict[str, list[float]], header: dict[str, Any]
) -> dict[str, Any]:
    starts = {name: median(values) for name, values in boot.items()}
    rows = []
    for level in levels:
        prop, rel, flo = median(level.propagator_s), median(level.reladiff_s), median(level.floor_s)
        rows.append(
            {
                **asdict(level),
                "propagator_median_s": prop,
                "reladiff_median_s": rel,
                "floor_median_s": flo,
                "reladiff_over_propagator": rel / prop,
                "propagator_over_floor_plus_python": prop / (flo + starts["python -c pass"]),
            }
        )
    return {
        **header,
        "startup": {n: {"median_s": starts[n], "runs_s": boot[n]} for n in boot},
        "version_over_import_psycopg": starts["propagator --version"] / starts["import psycopg"],
        "levels": rows,
    }


def text(document: dict[str, Any]) -> str:
    d = document
    m = d["machine"]
    lines = [
        f"{d['rows']:,} rows, medians of {d['runs']} runs, {d['date']}; {m['nproc']} CPUs, "
        f"{m['memory_gib']} GiB, PostgreSQL {m['postgresql']}, Python {m['python']}, "
        f"{d['reladiff']}",
        "",
        "| diff | propagator s | reladiff s (threads) | reladiff / propagator | floor s | "
        "propagator / (floor + python -c pass) | found: propagator | found: reladiff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["levels"]:
        found_p = "/".join(sorted({f"{n:,}" for n in r["propagator_found"]}))
        found_r = "/".join(sorted({f"{n:,}" for n in r["reladiff_found"]}))
        lines.append(
            f"| {r['label']} | {r['propagator_median_s']:.2f} | {r['reladiff_median_s']:.2f} "
            f"({r['threads']}) | {r['reladiff_over_propagator']:.2f} | {r['floor_median_s']:.2f} "
            f"| {r['propagator_over_floor_plus_python']:.2f} | {found_p} | {found_r} |"
        )
    lines += ["", *cpu_table(d["levels"]), ""]
    for r in d["levels"]:
        trials = ", ".join(f"-j {t}: {s:.2f} s" for t, s in r["thread_trials"].items())
        lines.append(f"{r['label']}: reladiff trials {trials}")
        for name in ("propagator_s", "reladiff_s", "floor_s"):
            lines.append(f"  {name[:-2]:<10} each run: {', '.join(f'{s:.2f}' for s in r[name])}")
        for name, used in r["cpu_s"].items():
            lines.append(f"  {name} CPU s each run: {', '.join(f'{s:.3f}' for s in used)}")
    boot = d["startup"]
    base = boot["python -c pass"]["median_s"]
    lines += ["", f"start-up, medians of {len(boot['python -c pass']['runs_s'])} runs each:"]
    for name, figure in boot.items():
        lines.append(
            f"  {name:<22} {figure['median_s'] * 1000:6.1f} ms  "
            f"({figure['median_s'] / base:.2f}× python -c pass, {base * 1000:.1f} ms)"
        )
    lines.append(
        f"  propagator --version / import psycopg: {d['version_over_import_psycopg']:.2f} "
        f"(propagator as `{d['propagator']}`)"
    )
    lines += [f"WARNING: {w}" for r in d["levels"] for w in r["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--diff", default="0,100,1%", help="comma-separated levels: 0, 100 (rows), 1%%"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per level")
    parser.add_argument("--startup-runs", type=int, default=10, help="runs per start-up figure")
    parser.add_argument(
        "--reladiff-threads", default="1,2,4,8", help="-j values tried at each level"
    )
    parser.add_argument("--reladiff-spec", default="reladiff[postgresql]", help="pip spec")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="leave propagator's modules uncompiled (a `pip install -e` checkout)",
    )
    args = parser.parse_args(argv)
    if not args.no_compile:
        compile_propagator()
    rows = args.rows
    levels = [Level(item.strip(), parse_diff(item, rows)) for item in args.diff.split(",")]
    candidates = [int(t) for t in args.reladiff_threads.split(",")]
    exe = reladiff_executable(args.reladiff_spec)

    with servers("production", "sandbox") as (production, sandbox):
        urls = (production.url(), sandbox.url())
        cpu = ServerCpu([production.data, sandbox.data])
        for url in urls:
            started = time.perf_counter()
            load(url, rows)
            say(f"loading {rows:,} rows: {time.perf_counter() - started:.1f} s")
        machine = machine_description(urls[0])
        say(f"machine: {machine}")
        boot = startup(exe, max(args.startup_runs, 5))
        say("start-up: " + ", ".join(f"{n} {median(s):.3f} s" for n, s in boot.items()))
        previous = 0
        for level in levels:
            shift(urls[1], rows, previous, -1)  # undo the previous level's changes
            shift(urls[1], rows, level.differing, +1)
            previous = level.differing
            measure(level, exe, urls, args.runs, candidates, cpu)

    header = {
        "rows": rows,
        "runs": args.runs,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "propagator": "python -m propagator"
        + (" (uncompiled modules)" if args.no_compile else " (compiled, as installed)"),
        "reladiff": "reladiff " + reladiff_version(exe),
    }
    document = report(levels, boot, header)
    print(json.dumps(document, indent=2) if args.json else "\n" + text(document))
    return 1 if any(level.warnings for level in levels) else 0


if __name__ == "__main__":
    raise SystemExit(main())
