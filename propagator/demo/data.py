"""The demo's data set: seed-shaped ``jobs`` tables, the same on every machine.

1,250 production jobs, 890 sandbox jobs (850 of them matched, 40 sandbox-only)
and 42 ``fab_order`` values that differ, two of them the seed's own examples,
so the dry-run report shows what the seed's script would have shown. A copy of
the sandbox (the demo's QA database) gets the same sandbox rows, drift included.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from propagator.core.mapping import Key
from propagator.sql import load_sql

__all__ = [
    "BULK_STAGE",
    "DEMO_DATABASE",
    "JOBS_TABLE_DDL",
    "QA_DATABASE",
    "DemoData",
    "Row",
    "build_demo_data",
    "load_demo_data",
]

DEMO_DATABASE = "app"
QA_DATABASE = "app_qa"  # the QA copy of the sandbox, on the sandbox server
#: The seed's jobs table (as the test harness builds it).
JOBS_TABLE_DDL = load_sql("sample/jobs.sql")
PRODUCTION_JOBS = 1250
MATCHED_JOBS = 850
SANDBOX_ONLY_JOBS = 40
FAB_ORDER_DIFFERENCES = 42
BULK_STAGE = "weld"
_RELEASES = "ABCDEFGH"
_COLORS = ("red", "blue", "green", "black", "white", "yellow")
_STAGES = ("cut", BULK_STAGE, "paint", "assemble", "ship")
_STAGE_WEIGHTS = (2, 3, 2, 2, 1)
# The seed's example lines: "10001-A: 500.0 → 510.0" and "10002-B: 750.0 → 800.0".
_SEED_EXAMPLES = {
    (10001, "A"): (Decimal("510.00"), Decimal("500.00")),
    (10002, "B"): (Decimal("800.00"), Decimal("750.00")),
}

Row = tuple[int, str, Decimal, str, str]


@dataclass(frozen=True, slots=True)
class DemoData:
    """Seed-shaped tables: 1,250 production jobs, 890 sandbox jobs, 42 fab_order drifts."""

    production: tuple[Row, ...]
    sandbox: tuple[Row, ...]

    @property
    def mirrored_keys(self) -> frozenset[Key]:
        """Production keys that also have a sandbox row (the only ones propagator updates)."""
        production = {(row[0], row[1]) for row in self.production}
        return frozenset(key for key in ((r[0], r[1]) for r in self.sandbox) if key in production)


def build_demo_data(seed: int = 1250) -> DemoData:
    """The same tables for a given seed, so the dry-run report is the same on every machine."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not a secret
    production: list[Row] = []
    for index in range(PRODUCTION_JOBS):
        key = (10001 + index, _RELEASES[index % len(_RELEASES)])
        fab_order = Decimal(rng.randrange(10, 200) * 10).quantize(Decimal("0.01"))
        fab_order = _SEED_EXAMPLES.get(key, (fab_order, fab_order))[0]
        stage = rng.choices(_STAGES, _STAGE_WEIGHTS)[0]
        production.append((key[0], key[1], fab_order, rng.choice(_COLORS), stage))
    seeded = [row for row in production if (row[0], row[1]) in _SEED_EXAMPLES]
    others = [row for row in production if (row[0], row[1]) not in _SEED_EXAMPLES]
    matched = seeded + rng.sample(others, MATCHED_JOBS - len(seeded))
    drifting = {(r[0], r[1]) for r in rng.sample(matched[len(seeded) :], FAB_ORDER_DIFFERENCES - 2)}
    sandbox: list[Row] = []
    for job, release, fab_order, color, stage in sorted(matched):
        if (job, release) in _SEED_EXAMPLES:
            fab_order = _SEED_EXAMPLES[(job, release)][1]
        elif (job, release) in drifting:
            step = Decimal(rng.choice((-50, -30, -20, -10, 10, 20, 30, 50)))
            fab_order = max(Decimal("10.00"), fab_order + step)
            if fab_order == production[job - 10001][2]:
                fab_order += Decimal("10.00")
        sandbox.append((job, release, fab_order, color, stage))
    for index in range(SANDBOX_ONLY_JOBS):
        job = 20001 + index
        sandbox.append((job, _RELEASES[index % len(_RELEASES)], Decimal("100.00"), "grey", "cut"))
    return DemoData(tuple(production), tuple(sandbox))


def load_demo_data(
    production_url: str, sandbox_url: str, data: DemoData, *, sandbox_copies: Sequence[str] = ()
) -> None:
    """Create ``public.jobs`` on both sides (if missing) and fill it with the demo rows.

    Each of ``sandbox_copies`` gets the sandbox's rows too.
    """
    targets = [(production_url, data.production)]
    targets += [(url, data.sandbox) for url in (sandbox_url, *sandbox_copies)]
    for url, rows in targets:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(JOBS_TABLE_DDL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY public.jobs (job, release, fab_order, paint_color, stage) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            conn.execute("ANALYZE public.jobs")
