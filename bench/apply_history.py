"""Benchmark what sync history costs the apply path: rows/s with and without it.

    python bench/apply_history.py --rows 100000 --rounds 5

Two embedded PostgreSQL servers (production, sandbox; ``fsync=off`` like the
tests), ``public.jobs`` loaded identically on both. Each round moves every
production ``fab_order`` by one (untimed), then times ``converge_keys`` over all
keys in the daemon's batches of ``--batch-size``: once without a hook, once
with the history hook (one ``INSERT … SELECT FROM unnest`` per batch, inside
the batch's transaction). The two modes alternate which goes first, so drift
on a shared machine falls on both. History is not truncated between rounds:
later rounds insert into a table that already holds the earlier ones, as in
life. Prints the median rows/s of each mode side by side, the overhead, and
the share of apply time spent in the history INSERT itself (timed inside the
same batches, so it does not depend on how steady the machine was between runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagator.demo.embedded import EmbeddedPostgres
from propagator.services.history import History
from propagator.services.sync import SyncSession, converge_keys
from propagator.settings import load_settings
from propagator.sql import load_sql

JOBS_DDL = load_sql("sample/jobs.sql")
LOAD = """
INSERT INTO public.jobs (job, release, fab_order, paint_color, stage)
SELECT 10000 + g / 2, CASE WHEN g %% 2 = 0 THEN 'A' ELSE 'B' END, (g %% 5000) + 0.25,
       'grey', 'fab'
FROM generate_series(0, %(rows)s - 1) AS g
"""


def load(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(JOBS_DDL)
        conn.execute(LOAD, {"rows": rows})
        conn.execute("VACUUM ANALYZE public.jobs")


def measure(settings: Any, keys: list[tuple[Any, ...]], *, with_history: bool) -> dict[str, float]:
    """One timed convergence of every key; production was just moved, so each row differs."""
    history = History(settings)
    recording = history.hook(changed_at=time.time()) if with_history else None
    in_hook = 0.0

    def timed_hook(conn: Any, results: Any, source: Any) -> None:
        nonlocal in_hook
        assert recording is not None
        started = time.perf_counter()
        recording(conn, results, source)
        in_hook += time.perf_counter() - started

    with SyncSession(settings, application_name="bench apply") as session:
        context = session.prepare()
        assert session.production is not None
        assert session.sandbox is not None
        started = time.perf_counter()
        result = converge_keys(
            context,
            session.production,
            session.sandbox,
            keys,
            source="event",
            on_applied=timed_hook if with_history else None,
        )
        seconds = time.perf_counter() - started
    assert result.statistics.updated == len(keys), result.statistics.to_dict()
    return {"rows": float(result.statistics.updated), "seconds": seconds, "in_hook": in_hook}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    production = EmbeddedPostgres("bench-history-production").start()
    sandbox = EmbeddedPostgres("bench-history-sandbox").start()
    try:
        load(production.url(), args.rows)
        load(sandbox.url(), args.rows)
        settings = load_settings(
            production_database_url=production.url(),
            sandbox_database_url=sandbox.url(),
            batch_size=args.batch_size,
        )
        with psycopg.connect(sandbox.url(), autocommit=True) as conn:
            History(settings).setup(conn)
        with psycopg.connect(production.url(), autocommit=True) as conn:
            keys = [tuple(r) for r in conn.execute("SELECT job, release FROM jobs ORDER BY 1, 2")]
        runs: dict[str, list[float]] = {"without": [], "with": []}
        hook_shares: list[float] = []
        for round_number in range(args.rounds):
            order = ["without", "with"] if round_number % 2 == 0 else ["with", "without"]
            for mode in order:
                with psycopg.connect(production.url(), autocommit=True) as conn:
                    conn.execute("UPDATE jobs SET fab_order = fab_order + 1")
                figures = measure(settings, keys, with_history=mode == "with")
                runs[mode].append(figures["rows"] / figures["seconds"])
                if mode == "with":
                    hook_shares.append(figures["in_hook"] / figures["seconds"])
                print(
                    f"round {round_number + 1} {mode:>7} history: "
                    f"{figures['rows']:,.0f} rows in {figures['seconds']:.2f}s "
                    f"= {runs[mode][-1]:,.0f} rows/s",
                    file=sys.stderr,
                )
        with psycopg.connect(sandbox.url(), autocommit=True) as conn:
            recorded = conn.execute("SELECT count(*) FROM propagator.sync_history").fetchone()
        without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
        summary = {
            "rows": args.rows,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "median_rows_per_second_without_history": round(without),
            "median_rows_per_second_with_history": round(with_),
            "overhead_percent": round((without - with_) / without * 100, 1),
            # Measured inside the same batches, so immune to drift between runs:
            "median_share_of_apply_time_in_history_insert_percent": round(
                statistics.median(hook_shares) * 100, 1
            ),
            "history_rows_recorded": recorded[0] if recorded else 0,
        }
    finally:
        production.cleanup()
        sandbox.cleanup()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for label, value in (
            ("rows per round", f"{summary['rows']:,} (batches of {args.batch_size})"),
            ("median rows/s, no history", f"{summary['median_rows_per_second_without_history']:,}"),
            ("median rows/s, with history", f"{summary['median_rows_per_second_with_history']:,}"),
            ("overhead (medians)", f"{summary['overhead_percent']}%"),
            (
                "history INSERT share",
                f"{summary['median_share_of_apply_time_in_history_insert_percent']}% "
                "of the apply time, inside the same batches",
            ),
            ("history rows recorded", f"{summary['history_rows_recorded']:,}"),
        ):
            print(f"{label:<28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
