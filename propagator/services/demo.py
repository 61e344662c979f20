"""The working parts of ``propagator demo``: throwaway servers, seed-shaped data, live changes.

Everything here is real: two separate embedded PostgreSQL servers, the
production triggers, the daemon of ``propagator run`` (in a thread of this
process) and a stream of production UPDATEs. Latency is measured from the
outside, the way a user would see it: from the moment a production UPDATE
has committed to the first sandbox read that shows the new value.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TextIO

import psycopg
from psycopg import sql
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from propagator.adapters.embedded import EmbeddedPostgres
from propagator.core.mapping import Key
from propagator.core.redact import register_secret
from propagator.core.values import values_equal
from propagator.daemon import Daemon
from propagator.errors import ConfigurationError, PropagatorError
from propagator.settings import Settings
from propagator.sql import load_sql

__all__ = [
    "BULK_STAGE",
    "DEMO_DATABASE",
    "JOBS_TABLE_DDL",
    "BulkVisible",
    "ChangeMade",
    "ChangeStream",
    "ChangeVisible",
    "DaemonThread",
    "DemoData",
    "DemoEvent",
    "DemoServers",
    "LatencyFigures",
    "LiveRun",
    "Propagation",
    "build_demo_data",
    "demo_settings",
    "load_demo_data",
    "log_file",
    "open_autocommit",
    "percentile",
]

DEMO_DATABASE = "app"
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
Connection = psycopg.Connection[tuple[Any, ...]]


# The data set.


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


def load_demo_data(production_url: str, sandbox_url: str, data: DemoData) -> None:
    """Create ``public.jobs`` on both sides (if missing) and fill it with the demo rows."""
    for url, rows in ((production_url, data.production), (sandbox_url, data.sandbox)):
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


# Servers and settings.


class DemoServers:
    """Production and sandbox: two separate throwaway servers, started side by side."""

    def __init__(self) -> None:
        self.production = EmbeddedPostgres("demo-production")
        self.sandbox = EmbeddedPostgres("demo-sandbox")
        self._starting: list[EmbeddedPostgres] = []

    @property
    def folders(self) -> tuple[Path, Path]:
        return self.production.root, self.sandbox.root

    def start(self) -> None:
        """Start both servers and create the demo database on each."""
        self._starting = [self.production, self.sandbox]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="demo-server") as pool:
            for future in [pool.submit(server.start) for server in self._starting]:
                future.result()
        self._starting = []
        for server in (self.production, self.sandbox):
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))

    def url(self, side: Literal["production", "sandbox"]) -> str:
        server = self.production if side == "production" else self.sandbox
        return server.url(DEMO_DATABASE)

    def close(self) -> None:
        """Stop both servers and delete their folders, even after an interrupted start.

        A start cut short may leave a postmaster that writes its pid file a moment
        later; wait for it briefly so it can be stopped too, never left behind.
        """
        for server in (self.production, self.sandbox):
            if server in self._starting and (server.data / "PG_VERSION").exists():
                deadline = time.monotonic() + 3.0
                pid_file = server.data / "postmaster.pid"
                while not pid_file.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            server.cleanup()
        self._starting = []


class _DemoSettings(Settings):
    """Settings from arguments only: the demo must not pick up a real deployment's variables."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(production_url: str, sandbox_url: str, *, api_token: str) -> Settings:
    """The seed's mapping (``public.jobs`` by ``(job, release)``, ``fab_order``), demo servers."""
    register_secret(api_token)
    return _DemoSettings(
        production_database_url=SecretStr(production_url),
        sandbox_database_url=SecretStr(sandbox_url),
        http_host="127.0.0.1",
        http_port=0,
        api_token=SecretStr(api_token),
        log_format="json",
        log_level="info",
    )


class DaemonThread:
    """The daemon of ``propagator run``, on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon(settings, handle_signals=False)
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="propagator-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = asyncio.run(self.daemon.run())
        except BaseException as error:  # reported by start()/stop() in the main thread
            self.error = error

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the daemon is ready (leader, listening, caught up)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise PropagatorError(f"the daemon stopped during start-up: {self._failure()}")
            ready, _ = self.daemon.readiness()
            if ready and self.daemon.http is not None:
                return
            time.sleep(0.05)
        _, reasons = self.daemon.readiness()
        raise PropagatorError(
            f"the daemon was not ready after {timeout:.0f}s: {'; '.join(reasons)}"
        )

    def check_alive(self) -> None:
        """Raise if the daemon stopped on its own: the demo must not wait for it in vain."""
        if not self._thread.is_alive():
            raise PropagatorError(f"the daemon stopped: {self._failure()}")

    def _failure(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        return self.daemon.crashed or self.daemon.last_error or f"exit code {self.exit_code}"

    @property
    def http_url(self) -> str:
        http = self.daemon.http
        if http is None:
            raise PropagatorError("the daemon serves no HTTP endpoint")
        return http.url

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One value from the daemon's Prometheus registry (0 when absent)."""
        value = self.daemon.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask for a graceful stop (the daemon drains), then wait for the thread."""
        if not self._thread.is_alive():
            return
        self.daemon.started.wait(timeout=5.0)
        self.daemon.request_stop()
        self._thread.join(timeout)


# The live stream of production changes and what the sandbox shows.


@dataclass(frozen=True, slots=True)
class ChangeMade:
    """A production statement committed."""

    kind: Literal["single", "bulk"]
    statement: str
    rows: int
    mirrored: int
    at: float
    key: Key | None = None
    old: Decimal | None = None
    new: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ChangeVisible:
    """A changed production value became visible in the sandbox."""

    kind: Literal["single", "bulk"]
    key: Key
    old: Decimal | None
    new: Decimal
    latency: float
    at: float


@dataclass(frozen=True, slots=True)
class BulkVisible:
    """Every mirrored row of a bulk statement is visible in the sandbox."""

    rows: int
    p50: float
    max: float
    at: float


DemoEvent = ChangeMade | ChangeVisible | BulkVisible


class ChangeStream:
    """Writes production the way an application would: single-row UPDATEs and one bulk UPDATE."""

    def __init__(self, conn: Connection, data: DemoData, *, seed: int = 7) -> None:
        self.conn = conn
        self.values: dict[Key, Decimal] = {(r[0], r[1]): r[2] for r in data.production}
        self.stages: dict[Key, str] = {(r[0], r[1]): r[4] for r in data.production}
        self.mirrored = data.mirrored_keys
        self._candidates = sorted(self.mirrored)
        self._rng = random.Random(seed)  # noqa: S311 - sample data, not a secret

    def single(self, busy: Iterable[Key]) -> tuple[Key, Decimal, Decimal]:
        """Change one mirrored job's fab_order (not one still on its way)."""
        busy = set(busy)
        key = self._rng.choice(self._candidates)
        while key in busy:
            key = self._rng.choice(self._candidates)
        old = self.values[key]
        new = old + Decimal(self._rng.choice((-30, -20, -10, 10, 20, 30)))
        if new <= 0:
            new = old + Decimal(10)
        self.conn.execute(
            "UPDATE public.jobs SET fab_order = %s, updated_at = now() "
            "WHERE job = %s AND release = %s",
            (new, key[0], key[1]),
        )
        self.values[key] = new
        return key, old, new

    @property
    def bulk_statement(self) -> str:
        return f"UPDATE jobs SET fab_order = fab_order + 25 WHERE stage = '{BULK_STAGE}'"

    def bulk(self) -> list[tuple[Key, Decimal, Decimal]]:
        """One statement over every job in one stage: hundreds of rows, one notification set."""
        rows = self.conn.execute(
            "UPDATE public.jobs SET fab_order = fab_order + 25, updated_at = now() "
            "WHERE stage = %s RETURNING job, release, fab_order",
            (BULK_STAGE,),
        ).fetchall()
        changed: list[tuple[Key, Decimal, Decimal]] = []
        for job, release, fab_order in rows:
            key = (job, release)
            changed.append((key, self.values[key], fab_order))
            self.values[key] = fab_order
        return changed


@dataclass(slots=True)
class _Expected:
    kind: Literal["single", "bulk"]
    old: Decimal | None
    new: Decimal
    committed_at: float


class Propagation:
    """Watches the sandbox for expected values and measures commit → visible latency.

    The watcher polls only the keys still on their way; a key's time of
    visibility is the start of the first read that shows its new value (the
    read's snapshot is taken then), so figures are upper bounds within one
    poll interval.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: dict[Key, _Expected] = {}
        self.superseded = 0
        self.bulk_pending = 0
        self.bulk_latencies: list[float] = []

    def expect(
        self,
        key: Key,
        old: Decimal | None,
        new: Decimal,
        committed_at: float,
        kind: Literal["single", "bulk"],
    ) -> None:
        if key in self.pending:
            self.superseded += 1  # a newer value replaces one not yet seen: measure the newer
            if self.pending[key].kind == "bulk":
                self.bulk_pending -= 1
        self.pending[key] = _Expected(kind, old, new, committed_at)
        if kind == "bulk":
            self.bulk_pending += 1

    def poll(self) -> list[DemoEvent]:
        """Read the pending keys once; return what became visible."""
        if not self.pending:
            return []
        keys = list(self.pending)
        read_at = time.perf_counter()
        rows = self.conn.execute(
            "SELECT job, release, fab_order FROM public.jobs "
            "WHERE (job, release) IN (SELECT * FROM unnest(%s::int[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        events: list[DemoEvent] = []
        now = time.perf_counter()
        for job, release, fab_order in rows:
            key = (job, release)
            expected = self.pending.get(key)
            if expected is None or not values_equal(fab_order, expected.new):
                continue
            del self.pending[key]
            latency = max(0.0, read_at - expected.committed_at)
            events.append(
                ChangeVisible(expected.kind, key, expected.old, expected.new, latency, now)
            )
            if expected.kind == "bulk":
                self.bulk_pending -= 1
                self.bulk_latencies.append(latency)
        if self.bulk_latencies and self.bulk_pending == 0:
            ordered = sorted(self.bulk_latencies)
            events.append(BulkVisible(len(ordered), percentile(ordered, 50), ordered[-1], now))
            self.bulk_latencies = []
        return events


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class LatencyFigures:
    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencyFigures:
        ordered = sorted(values)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(ordered), percentile(ordered, 50), percentile(ordered, 99), ordered[-1])


@dataclass
class LiveRun:
    """The live phase: changes at a steady rate, one bulk statement, until time or a stop.

    ``run`` is a single-threaded loop (write, poll, report) so the order of
    events on screen is the order in which they happened.
    """

    stream: ChangeStream
    propagation: Propagation
    duration: float
    rate: float
    on_event: Callable[[DemoEvent], None]
    on_tick: Callable[[], None] = lambda: None
    poll_interval: float = 0.01
    settle_timeout: float = 30.0
    started_at: float = 0.0
    singles: int = 0
    bulk_rows: int = 0
    bulk_mirrored: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"single": [], "bulk": []})
    recent: deque[ChangeVisible] = field(default_factory=lambda: deque(maxlen=12))
    unsettled: int = 0
    stopped_early: bool = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started_at if self.started_at else 0.0

    @property
    def visible(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def figures(self, kind: str | None = None) -> LatencyFigures:
        if kind is None:
            return LatencyFigures.of(v for values in self.latencies.values() for v in values)
        return LatencyFigures.of(self.latencies[kind])

    def _emit(self, event: DemoEvent) -> None:
        if isinstance(event, ChangeVisible):
            self.latencies[event.kind].append(event.latency)
            self.recent.append(event)
        self.on_event(event)

    def _poll(self) -> None:
        for event in self.propagation.poll():
            self._emit(event)

    def run(self, stop_requested: Callable[[], bool]) -> None:
        """Write and watch for ``duration`` seconds (or until a stop), then let it settle."""
        self.started_at = time.perf_counter()
        interval = 1.0 / self.rate if self.rate > 0 else math.inf
        next_single = self.started_at + min(0.2, interval)
        bulk_at = self.started_at + self.duration * 0.4
        bulk_done = False
        end = self.started_at + self.duration
        while True:
            now = time.perf_counter()
            if stop_requested():
                self.stopped_early = now < end
                break
            if now >= end:
                break
            if not bulk_done and now >= bulk_at:
                self._bulk()
                bulk_done = True
            elif now >= next_single:
                self._single()
                next_single += interval
                if next_single < now:  # fell behind (a slow machine): keep the rate, skip ahead
                    next_single = now + interval
            self._poll()
            self.on_tick()
            time.sleep(self.poll_interval)
        self._settle(stop_requested)

    def _single(self) -> None:
        key, old, new = self.stream.single(self.propagation.pending)
        committed_at = time.perf_counter()
        self.singles += 1
        self.propagation.expect(key, old, new, committed_at, "single")
        statement = f"UPDATE jobs SET fab_order = {new} WHERE (job, release) = {key}"
        self._emit(ChangeMade("single", statement, 1, 1, committed_at, key, old, new))

    def _bulk(self) -> None:
        changed = self.stream.bulk()
        committed_at = time.perf_counter()
        mirrored = [(k, o, n) for k, o, n in changed if k in self.stream.mirrored]
        self.bulk_rows, self.bulk_mirrored = len(changed), len(mirrored)
        for key, old, new in mirrored:
            self.propagation.expect(key, old, new, committed_at, "bulk")
        event = ChangeMade(
            "bulk", self.stream.bulk_statement, len(changed), len(mirrored), committed_at
        )
        self._emit(event)

    def _settle(self, stop_requested: Callable[[], bool]) -> None:
        """No more writes: wait (bounded) until everything written is visible."""
        deadline = time.perf_counter() + self.settle_timeout
        while self.propagation.pending and time.perf_counter() < deadline:
            self._poll()
            self.on_tick()
            time.sleep(self.poll_interval)
        self.unsettled = len(self.propagation.pending)


def open_autocommit(url: str, application_name: str) -> Connection:
    """A plain autocommit connection for the demo's own reads and writes."""
    try:
        return psycopg.connect(url, autocommit=True, application_name=application_name)
    except psycopg.Error as error:
        raise ConfigurationError(f"cannot connect to the demo server: {error}") from None


def log_file(folder: Path) -> TextIO:
    """The daemon's JSON log lines go to a file, so the terminal shows only the demo."""
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / "daemon.log").open("a", encoding="utf-8")
