"""Hostile HTTP clients for the hardening tests: idle and slow-loris floods, a fuzzer.

``Flood`` holds connections open from many loopback source addresses (all of
127.0.0.0/8 reaches the loopback interface on Linux) in one background thread,
and reconnects each one as soon as the server drops it, as a determined
attacker would. ``fuzzed_queries`` builds a fixed, seeded set of hostile
``/history`` query strings.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = ["Flood", "FloodStats", "fuzzed_queries", "rss_kib"]

SLOW_START = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "


@dataclass
class FloodStats:
    connects: int = 0
    drops: int = 0
    failed_connects: int = 0
    held: int = 0


@dataclass
class _Client:
    kind: str  # "idle" sends nothing; "slow" sends a request one byte at a time, never ending it
    source: str
    sock: socket.socket | None = None
    sent_at: float = 0.0


@dataclass
class Flood:
    """``idle`` and ``slow`` connections to ``port``, each kind spread over ``sources``."""

    port: int
    clients: list[_Client] = field(default_factory=list)
    stats: FloodStats = field(default_factory=FloodStats)
    round_seconds: float = 0.2
    byte_every: float = 1.0

    def reconnected_since(self) -> Callable[[], bool]:
        """A condition: true once the flood made a new connection after this call."""
        seen = self.stats.connects
        return lambda: self.stats.connects > seen

    def add(self, kind: str, sources: list[str], count: int) -> None:
        self.clients += [_Client(kind, sources[n % len(sources)]) for n in range(count)]

    @contextlib.contextmanager
    def running(self) -> Iterator[Flood]:
        halt = threading.Event()
        thread = threading.Thread(target=self._run, args=(halt,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            halt.set()
            thread.join(10)
            for client in self.clients:
                self._close(client)

    def _run(self, halt: threading.Event) -> None:
        while not halt.is_set():
            now = time.monotonic()
            for client in self.clients:
                if client.sock is None:
                    self._connect(client, now)
                elif not self._still_open(client) or not self._trickle(client, now):
                    self.stats.drops += 1
                    self._close(client)
                    self._connect(client, now)
            self.stats.held = sum(1 for c in self.clients if c.sock is not None)
            halt.wait(self.round_seconds)

    def _connect(self, client: _Client, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((client.source, 0))
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", self.port))
            if client.kind == "slow":
                sock.sendall(SLOW_START)
            sock.setblocking(False)
        except OSError:
            self.stats.failed_connects += 1
            sock.close()
            return
        client.sock, client.sent_at = sock, now
        self.stats.connects += 1

    @staticmethod
    def _still_open(client: _Client) -> bool:
        assert client.sock is not None
        try:
            client.sock.recv(4096)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # an answer (408, 503) or the end of the stream: the server is done

    def _trickle(self, client: _Client, now: float) -> bool:
        if client.kind != "slow" or now - client.sent_at < self.byte_every:
            return True
        assert client.sock is not None
        try:
            client.sock.send(b"a")
        except OSError:
            return False
        client.sent_at = now
        return True

    @staticmethod
    def _close(client: _Client) -> None:
        if client.sock is not None:
            client.sock.close()
            client.sock = None


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


_NAMES = ("key", "field", "source", "since", "until", "limit", "before")
_FRAGMENTS = (
    "",
    "0",
    "-1",
    "1e9",
    "9" * 30,
    "1" * 5000,
    "１",
    "٣",
    "²",
    "0001-01-01",
    "9999-12-31T23:59:59+14:00",
    "10000-01-01",
    "2024-02-30",
    "1000000d",
    "999999999999d",
    "1.5.5h",
    "nan",
    "inf",
    "[" * 3000,
    "[1,",
    '["a",{"b":[1]}]',
    '[1e999999, "A"]',
    "[" + "1," * 400 + "1]",
    '"',
    "'; DROP TABLE jobs; --",
    "%",
    "%zz",
    "%C0%AF",
    "\u202e\ufeff",
    "<script>",
    "event",
    "1h",
    "1-A",
)


def fuzzed_queries(count: int, seed: int = 20) -> list[str]:
    """``count`` query strings mixing hostile fragments, percent-encoded as a client would."""
    chooser = random.Random(seed)
    queries = []
    for _ in range(count):
        parts: list[str] = []
        for _ in range(chooser.randint(1, 4)):
            name = chooser.choice((*_NAMES, *_NAMES, "x" * 50, ""))
            value = "".join(chooser.choice(_FRAGMENTS) for _ in range(chooser.randint(1, 2)))
            if chooser.random() < 0.1:
                value = "".join(chr(chooser.randint(0x20, 0x2FFF)) for _ in range(12))
            part = f"{quote(name)}={quote(value, safe='')}"
            if sum(len(p) for p in parts) + len(part) < 12_000:  # under the 16 KiB header limit
                parts.append(part)
        queries.append("&".join(parts))
    return queries
