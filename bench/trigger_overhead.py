"""What the change trigger costs production: pgbench TPS of single-row UPDATEs.

Two workloads (UPDATE of a mapped column, UPDATE of an unmapped column) against
the same table under several trigger designs, measured in the same run so the
figures are comparable on a noisy machine: runs are interleaved and each figure
is the median of ``--runs`` pgbench runs. TPS on a shared machine swings with
everything else running, so the server's own view is printed too: the median
execution time of the same UPDATE under EXPLAIN ANALYZE, triggers included.

    python bench/trigger_overhead.py --runs 3 --duration 10

Designs:
  none            no trigger (the ceiling)
  row_constant    a bare row trigger calling pg_notify with a constant payload
  statement       a statement trigger with transition tables that finds changed
                  keys with one join per statement (the first design, reduced:
                  one payload, no chunking, so if anything a lower bound)
  propagator      what `propagator triggers install` installs: row triggers
                  gated by WHEN collect keys, one statement trigger sends them
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from propagator.adapters.embedded import EmbeddedPostgres
from propagator.services import triggers
from propagator.settings import load_settings

TABLE = """
CREATE TABLE public.jobs (
    id bigserial PRIMARY KEY,
    job integer NOT NULL,
    release text NOT NULL,
    fab_order numeric(12, 2),
    paint_color text,
    stage text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job, release)
);
INSERT INTO public.jobs (job, release, fab_order, paint_color, stage)
SELECT g, 'R' || g, g, 'red', 'cut' FROM generate_series(1, %(rows)s) AS g;
"""

WORKLOADS = {
    "mapped": "UPDATE jobs SET fab_order = fab_order + 1 WHERE id = :id;",
    "unmapped": "UPDATE jobs SET paint_color = 'c' || :id WHERE id = :id;",
}

ROW_CONSTANT = """
CREATE FUNCTION bench_notify_constant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('propagator_jobs', 'changed'); RETURN NULL; END $$;
CREATE TRIGGER bench_row_constant AFTER UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION bench_notify_constant();
"""

STATEMENT = """
CREATE FUNCTION bench_notify_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    items text;
BEGIN
    SELECT string_agg(DISTINCT k.key_item::text, ',')
    INTO items
    FROM propagator_new AS n
    FULL JOIN propagator_old AS o ON n.job = o.job AND n.release = o.release
    CROSS JOIN LATERAL (
        SELECT CASE WHEN n.job IS NULL THEN jsonb_build_array(o.job, o.release)
                    ELSE jsonb_build_array(n.job, n.release) END
    ) AS k(key_item)
    WHERE n.job IS NULL OR o.job IS NULL
       OR jsonb_build_array(o.fab_order) IS DISTINCT FROM jsonb_build_array(n.fab_order);
    IF items IS NOT NULL THEN
        PERFORM pg_notify('propagator_jobs', '{"v":1,"t":'
            || extract(epoch FROM clock_timestamp()) || ',"k":[' || items || ']}');
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END $$;
CREATE TRIGGER bench_statement AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS propagator_old NEW TABLE AS propagator_new
    FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_statement();
"""

RESET = """
DROP TRIGGER IF EXISTS bench_row_constant ON jobs;
DROP FUNCTION IF EXISTS bench_notify_constant();
DROP TRIGGER IF EXISTS bench_statement ON jobs;
DROP FUNCTION IF EXISTS bench_notify_statement();
"""

_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pgbench runs per figure (median)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--samples", type=int, default=400, help="EXPLAIN ANALYZE statements per design"
    )
    args = parser.parse_args()

    with EmbeddedPostgres("bench-triggers") as server:
        url = server.url()
        settings = load_settings(None, production_database_url=url)

        def uninstall_all(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            conn.execute(RESET)
            triggers.uninstall(conn, settings)

        def design(extra: str | None) -> Callable[[psycopg.Connection[tuple[object, ...]]], None]:
            def apply(conn: psycopg.Connection[tuple[object, ...]]) -> None:
                uninstall_all(conn)
                if extra == "propagator":
                    triggers.install(conn, settings)
                elif extra is not None:
                    conn.execute(extra.encode())

            return apply

        designs = {
            "none": design(None),
            "row_constant": design(ROW_CONSTANT),
            "statement": design(STATEMENT),
            "propagator": design("propagator"),
        }
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLE.encode().replace(b"%(rows)s", str(args.rows).encode()))
            # Somebody LISTENs, as in production, so notifications are really queued.
            conn.execute("LISTEN propagator_jobs")
            scripts = _write_scripts(args.rows)
            results: dict[tuple[str, str], list[float]] = {}
            for run in range(args.runs):
                for name, apply in designs.items():
                    apply(conn)
                    for workload, script in scripts.items():
                        conn.execute("VACUUM jobs")
                        for _ in conn.notifies(timeout=0.01):
                            pass  # drain so the queue never fills
                        output = server.pgbench(
                            "-n",
                            "-c",
                            str(args.clients),
                            "-j",
                            str(args.clients),
                            "-T",
                            str(args.duration),
                            "-f",
                            str(script),
                        ).stdout
                        match = _TPS.search(output)
                        if match is None:
                            print(f"pgbench printed no tps:\n{output}", file=sys.stderr)
                            return 1
                        tps = float(match.group(1))
                        results.setdefault((workload, name), []).append(tps)
                        print(f"run {run + 1} {workload:8} {name:12} {tps:10.0f} tps", flush=True)
            # Server-side times, designs interleaved in short rounds so that load
            # from anything else on the machine falls on every design alike.
            samples: dict[tuple[str, str], list[float]] = {}
            rounds = 10
            for _ in range(rounds):
                for name, apply in designs.items():
                    apply(conn)
                    for workload, statement in WORKLOADS.items():
                        samples.setdefault((workload, name), []).extend(
                            _execution_times(conn, statement, args.rows, args.samples // rounds)
                        )
            timings = {key: statistics.median(values) for key, values in samples.items()}
        _report(results, timings, args)
    return 0


def _write_scripts(rows: int) -> dict[str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="propagator-bench-"))
    scripts = {}
    for workload, statement in WORKLOADS.items():
        path = folder / f"{workload}.sql"
        path.write_text(f"\\set id random(1, {rows})\n{statement}\n")
        scripts[workload] = path
    return scripts


def _execution_times(
    conn: psycopg.Connection[tuple[object, ...]], statement: str, rows: int, samples: int
) -> list[float]:
    """Server-side microseconds of single UPDATEs, triggers included (after 5 warm-up runs)."""
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + statement.replace(":id", "%(id)s")
    times = []
    for sample in range(samples + 5):
        row = conn.execute(explain.encode(), {"id": sample * 7919 % rows + 1}).fetchone()
        assert row is not None
        plan: Any = row[0]
        times.append(float(plan[0]["Execution Time"]) * 1000)
    for _ in conn.notifies(timeout=0.01):
        pass
    return times[5:]


def _report(
    results: dict[tuple[str, str], list[float]],
    timings: dict[tuple[str, str], float],
    args: argparse.Namespace,
) -> None:
    print()
    print(
        f"single-row UPDATE TPS, median of {args.runs} x {args.duration}s pgbench runs, "
        f"{args.clients} clients, {args.rows:,} rows"
    )
    print(f"{'workload':10}{'design':14}{'median tps':>12}{'vs none':>10}{'exec us':>10}   runs")
    for workload in WORKLOADS:
        baseline = statistics.median(results[(workload, "none")])
        for (kind, name), values in results.items():
            if kind != workload:
                continue
            median = statistics.median(values)
            change = (median / baseline - 1) * 100
            runs = ", ".join(f"{v:.0f}" for v in values)
            micros = timings[(workload, name)]
            print(f"{workload:10}{name:14}{median:12.0f}{change:+9.1f}%{micros:10.1f}   {runs}")
    print(
        f"exec us: median server execution time of one UPDATE, triggers included "
        f"({args.samples} EXPLAIN ANALYZE per figure, designs interleaved)"
    )


if __name__ == "__main__":
    sys.exit(main())
