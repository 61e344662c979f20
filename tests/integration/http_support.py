"""An HttpServer on real sockets in its own event loop thread, and a plain client for it."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from propagator.observability.http import HttpServer
from propagator.observability.metrics import Metrics

__all__ = ["Answer", "Probe", "Running", "raw", "request", "serving", "status_line"]


@dataclass
class Probe:
    """What the server's callables answer; tests flip these."""

    alive: bool = True
    ready: bool = True
    reasons: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=lambda: {"state": "running", "leader": True})
    fail: bool = False
    check: Callable[[], bool] | None = None

    def liveness(self) -> bool:
        if self.fail:
            raise RuntimeError("liveness exploded")
        return self.check() if self.check is not None else self.alive

    def readiness(self) -> tuple[bool, list[str]]:
        if self.fail:
            raise RuntimeError("readiness exploded")
        return self.ready, list(self.reasons)

    def status_payload(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("status exploded")
        return self.status


@dataclass
class Running:
    server: HttpServer
    probe: Probe
    metrics: Metrics
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coroutine_factory: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine_factory(), self.loop).result(10)


@contextmanager
def serving(**options: Any) -> Iterator[Running]:
    """An HttpServer on port 0 in its own event loop thread, as in the daemon."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    probe, metrics = Probe(), Metrics()
    server = HttpServer(
        "127.0.0.1",
        0,
        metrics,
        status=probe.status_payload,
        readiness=probe.readiness,
        liveness=probe.liveness,
        **options,
    )
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield Running(server, probe, metrics, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def raw(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()
