"""How fast ``converge_keys`` applies changes, by batch size (the event and reconcile write path).

Two embedded servers hold the same ``jobs`` table; each run changes 10,000 random
production rows and converges them. Prints the median rows/s per batch size
beside the 1,000-row baseline measured in the same run.

    python bench/apply_batch_size.py [--rows 200000] [--keys 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg

from propagator.demo.embedded import EmbeddedPostgres
from propagator.services.sync import SyncSession, converge_keys
from propagator.settings import load_settings
from propagator.sql import load_sql

DDL = load_sql("sample/jobs.sql")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="250,1000,2500,5000,10000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with EmbeddedPostgres("bench-prod") as production, EmbeddedPostgres("bench-sand") as sandbox:
        for server in (production, sandbox):
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(DDL)
                conn.execute(
                    "INSERT INTO jobs (job, release, fab_order) "
                    "SELECT g, 'R' || (g %% 3), 1 FROM generate_series(1, %s) AS g",
                    (args.rows,),
                )
                conn.execute("ANALYZE jobs")
        medians: dict[int, float] = {}
        for size in sizes:
            settings = load_settings(
                production_database_url=production.url(),
                sandbox_database_url=sandbox.url(),
                history_enabled=False,
                batch_size=size,
            )
            seconds = []
            with SyncSession(settings) as session:
                context = session.prepare()
                assert session.production is not None
                assert session.sandbox is not None
                for _ in range(args.runs):
                    jobs = random.sample(range(1, args.rows + 1), args.keys)
                    with psycopg.connect(production.url(), autocommit=True) as conn:
                        conn.execute(
                            "UPDATE jobs SET fab_order = fab_order + 1 WHERE job = ANY(%s)", (jobs,)
                        )
                    keys = [(job, f"R{job % 3}") for job in jobs]
                    started = time.perf_counter()
                    result = converge_keys(context, session.production, session.sandbox, keys)
                    seconds.append(time.perf_counter() - started)
                    assert len(result.updated) == args.keys
            medians[size] = statistics.median(seconds)
        baseline = args.keys / medians.get(1000, medians[sizes[0]])
        print(f"{'batch size':>10}  {'rows/s (median)':>16}  {'vs 1000':>8}")
        for size in sizes:
            rate = args.keys / medians[size]
            print(f"{size:>10}  {rate:>16,.0f}  {rate / baseline:>7.2f}x")


if __name__ == "__main__":
    main()
