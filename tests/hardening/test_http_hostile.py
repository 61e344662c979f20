"""A running daemon's HTTP endpoint under hostile clients: floods, malformed input, foreign Host."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import quote

import pytest

from tests.hardening.flood_support import Flood, fuzzed_queries, rss_kib
from tests.hardening.support import DaemonProcess, daemon_process, pair_env, seed_equal
from tests.helpers import DatabasePair, wait_until

TOKEN = "hostile-api-token-3c9e1f"
READ_TOKEN = "hostile-read-token-81d2aa"
MEBIBYTE_KIB = 1024

# Each input the issue found answering 500 (or nothing), as a query string of GET /history.
LISTED = (
    "since=0001-01-01",
    "since=1000000d",
    "since=999999999999d",
    "key=" + quote("[" * 3000),
    "limit=" + "9" * 5000,
    "before=" + "9" * 5000,
    "limit=" + quote("１"),
)


def timed_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    """Status and seconds of one GET on a new connection (status 0: no answer)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except (OSError, http.client.HTTPException):
        return 0, time.monotonic() - started
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def error_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("level") in ("error", "critical", "exception")]


@pytest.mark.slow
def test_probes_answer_within_a_second_under_idle_and_slow_loris_floods(
    databases: DatabasePair, tmp_path: Path, measure: Any
) -> None:
    """200 idle and 200 slow-loris connections, renewed when dropped: probes 200 in < 1 s."""
    seed_equal(databases, 10)
    env = pair_env(
        databases,
        PROPAGATOR_API_TOKEN=TOKEN,
        PROPAGATOR_READ_TOKEN=READ_TOKEN,
        PROPAGATOR_HTTP_READ_PROTECTION="true",
    )
    with daemon_process(env, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        rss_before = rss_kib(daemon.pid)
        flood = Flood(daemon.port)
        flood.add("idle", [f"127.0.1.{n}" for n in range(1, 101)], 200)
        # Half the slow clients share the probes' own address: its per-client limit is full.
        flood.add("slow", ["127.0.0.1"], 100)
        flood.add("slow", [f"127.0.2.{n}" for n in range(1, 101)], 100)
        results: list[tuple[int, float]] = []
        rss_peak = rss_before
        with flood.running():
            wait_until(lambda: flood.stats.connects >= 400, what="the flood's 400 connections")
            deadline = time.monotonic() + 6  # two first-byte timeouts of the idle clients
            while time.monotonic() < deadline:
                churned = flood.reconnected_since()
                results += [timed_get(daemon.port, p) for p in ("/healthz", "/readyz")]
                rss_peak = max(rss_peak, rss_kib(daemon.pid))
                # Paced by the attack itself: the next probes go once it reconnected again.
                wait_until(churned, what="the flood to reconnect again")
            held = flood.stats.held
        evicted = daemon.metric("propagator_http_refused_total", reason="evicted")
        assert error_lines(daemon) == []
    latencies = [took for _, took in results]
    measure("probe latency, worst", max(latencies))
    measure("probe latency, median", median(latencies))
    measure("probes answered", len(results), "requests")
    measure("attacker connections made", flood.stats.connects, "connections")
    measure("connections evicted", evicted, "connections")
    measure("RSS growth under the flood", (rss_peak - rss_before) / MEBIBYTE_KIB, "MiB")
    assert [status for status, _ in results] == [200] * len(results)
    assert max(latencies) < 1.0
    assert len(results) >= 20
    assert held >= 300  # the attacker really held its connections open meanwhile
    assert evicted > 0
    assert flood.stats.drops > 0
    assert rss_peak - rss_before < 32 * MEBIBYTE_KIB


def test_malformed_input_is_a_400_with_a_reason_and_no_error_line(
    databases: DatabasePair, tmp_path: Path, measure: Any
) -> None:
    """The issue's inputs and 300 fuzzed queries: 400s (or 200s), no error log, still serving."""
    seed_equal(databases, 5)
    with daemon_process(pair_env(databases), tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        wait_until(lambda: get(daemon.port, "/history")[0] == 200, what="history ready")
        for query in LISTED:
            status, body = get(daemon.port, "/history?" + query)
            assert status == 400, (query[:40], body)
            assert isinstance(body["error"], str)
            assert "\n" not in body["error"]
            assert len(body["error"]) < 1200
        for length in (b"\xb2", "١".encode(), b"9" * 40):  # ² as latin-1, an Arabic 1
            request_head = b"POST /history HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
            answer = raw(daemon.port, request_head + length + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        statuses: dict[int, int] = {}
        started = time.monotonic()
        for query in fuzzed_queries(300):
            status, body = get(daemon.port, "/history?" + query)
            statuses[status] = statuses.get(status, 0) + 1
            assert status in (200, 400), (query[:80], status, body)
            if status == 400:
                assert "\n" not in body["error"]
        measure("fuzzed queries per second", 300 / (time.monotonic() - started), "1/s")
        foreign = get(daemon.port, "/history", {"Host": "rebound.attacker.example"})
        assert foreign[0] == 421
        assert get(daemon.port, "/healthz") == (200, {"status": "ok"})
        assert daemon.metric("propagator_http_refused_total", reason="bad_request") >= len(LISTED)
        assert daemon.metric("propagator_http_refused_total", reason="host") == 1
        assert error_lines(daemon) == []
        assert not daemon.events("http_handler_failed")
        assert not daemon.events("http_connection_failed")
    assert statuses.get(400, 0) > 100
    assert statuses.get(200, 0) > 0
