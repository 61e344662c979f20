"""Benchmark ``propagator reconcile --apply`` against a naive baseline, on two local servers.

    python bench/reconcile.py --rows 1000000 --diff 0,100,1% --runs 3 --method auto

For every ``--diff`` scenario and run, the sandbox gets the same scattered
differences before each tool runs; each tool is a child process whose wall time
and peak RSS (``wait4``) are recorded. The naive baseline is what a first
version would do: fetch both tables whole into dicts, compare, and send one
UPDATE per differing row, committed at the end. Bytes sent by both servers are
counted by a TCP proxy in one extra, untimed run per tool. Medians are printed
with the ratios naive / propagator (higher is better for propagator).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CountingProxy,
    Measurement,
    load_jobs,
    machine_description,
    make_differences,
    median,
    parse_diff,
    run_measured,
    servers,
)

TOOLS = ("naive", "propagator")


def naive(production_url: str, sandbox_url: str) -> None:
    """The baseline: whole tables into dicts, compare, one UPDATE per differing row."""
    query = "SELECT job, release, fab_order FROM public.jobs"
    with psycopg.connect(production_url) as production:
        wanted = {(job, release): value for job, release, value in production.execute(query)}
    with psycopg.connect(sandbox_url) as sandbox:
        current = {(job, release): value for job, release, value in sandbox.execute(query)}
        changed = [
            (value, job, release)
            for (job, release), value in wanted.items()
            if (job, release) in current and current[(job, release)] != value
        ]
        for value, job, release in changed:
            sandbox.execute(
                "UPDATE public.jobs SET fab_order = %s WHERE job = %s AND release = %s",
                (value, job, release),
            )
        sandbox.commit()
    print(json.dumps({"differences": len(changed), "updated": len(changed)}))


def command(tool: str, production_url: str, sandbox_url: str, method: str) -> list[str]:
    if tool == "naive":
        return [sys.executable, str(Path(__file__).resolve()), "naive", production_url, sandbox_url]
    return [
        sys.executable,
        "-m",
        "propagator",
        "reconcile",
        "--apply",
        "--format",
        "json",
        "--method",
        method,
    ]


def environment(production_url: str, sandbox_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    env.update(PRODUCTION_DATABASE_URL=production_url, SANDBOX_DATABASE_URL=sandbox_url)
    return env


def updated_rows(tool: str, result: Measurement) -> tuple[int, str]:
    """Rows the tool says it updated, and the method it used."""
    if result.returncode != 0:
        raise SystemExit(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
    document: dict[str, Any] = json.loads(result.stdout)
    if tool == "naive":
        return int(document["updated"]), "dicts"
    method = str(document["method"])
    if document.get("fallback_reason"):
        method += f" (fell back: {document['fallback_reason']})"
    return int(document["statistics"]["updated"]), method


@dataclass
class Scenario:
    rows: int
    label: str
    differing: int
    seconds: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    rss_mib: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    bytes_from_servers: dict[str, int] = field(default_factory=dict)
    method: str = ""


def measure(
    scenario: Scenario,
    runs: int,
    method: str,
    urls: tuple[str, str],
    proxies: tuple[CountingProxy, CountingProxy],
    say: Callable[[str], None],
) -> None:
    sandbox_url = urls[1]
    for run in range(1, runs + 2):
        timed = run <= runs  # the last run goes through the counting proxies, untimed
        for tool in TOOLS:
            make_differences(sandbox_url, scenario.rows, scenario.differing)
            if timed:
                env_urls = urls
            else:
                env_urls = (proxies[0].url(), proxies[1].url())
                for proxy in proxies:
                    proxy.reset()
            result = run_measured(command(tool, *env_urls, method), environment(*env_urls))
            updated, used = updated_rows(tool, result)
            if updated != scenario.differing:
                raise SystemExit(
                    f"{tool} updated {updated} rows, expected {scenario.differing} "
                    f"({scenario.label})"
                )
            if tool == "propagator":
                scenario.method = used
            if timed:
                scenario.seconds[tool].append(result.seconds)
                scenario.rss_mib[tool].append(result.peak_rss_mib)
                say(
                    f"  {scenario.label:>10} run {run}: {tool:<10} {result.seconds:7.2f} s "
                    f"{result.peak_rss_mib:7.1f} MiB"
                )
            else:
                sent = sum(proxy.counter.from_server for proxy in proxies)
                scenario.bytes_from_servers[tool] = sent
                say(f"  {scenario.label:>10} bytes: {tool:<10} {sent:,} from the servers")


def table(scenarios: list[Scenario]) -> str:
    header = (
        "| rows | diff | tool | wall s (median) | peak RSS MiB | bytes from servers | "
        "speed-up | memory ratio |\n|---:|---:|---|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for s in scenarios:
        naive_s, naive_m = median(s.seconds["naive"]), median(s.rss_mib["naive"])
        for tool in TOOLS:
            secs, mib = median(s.seconds[tool]), median(s.rss_mib[tool])
            label = "naive" if tool == "naive" else f"propagator ({s.method})"
            ratio = f"{naive_s / secs:.1f}×" if tool != "naive" else ""
            memory = f"{mib / naive_m:.2f}" if tool != "naive" else ""
            lines.append(
                f"| {s.rows:,} | {s.label} | {label} | {secs:.2f} | {mib:.0f} | "
                f"{s.bytes_from_servers.get(tool, 0):,} | {ratio} | {memory} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "naive":
        naive(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--diff", default="0,100,1%", help="comma-separated scenarios: 0, 100 (rows), 1%%"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per scenario and tool")
    parser.add_argument("--method", choices=("auto", "checksum", "stream"), default="auto")
    args = parser.parse_args(argv)
    rows = args.rows
    scenarios = [
        Scenario(rows, text.strip(), parse_diff(text, rows)) for text in args.diff.split(",")
    ]

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with servers("production", "sandbox") as (production, sandbox):
        urls = (production.url(), sandbox.url())
        for url in urls:
            say(f"loading {rows:,} rows: {load_jobs(url, rows):.1f} s")
        machine = machine_description(urls[0])
        say(f"machine: {machine}")
        with CountingProxy(production.port) as p_proxy, CountingProxy(sandbox.port) as s_proxy:
            for scenario in scenarios:
                measure(scenario, args.runs, args.method, urls, (p_proxy, s_proxy), say)
    print(
        f"\n{rows:,} rows, --method {args.method}, median of {args.runs} runs; "
        f"machine: {machine['nproc']} CPUs, {machine['memory_gib']} GiB, "
        f"PostgreSQL {machine['postgresql']}, Python {machine['python']}\n"
    )
    print(table(scenarios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
