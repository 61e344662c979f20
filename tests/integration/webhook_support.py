"""A real HTTP receiver for webhook tests: records every request, answers as told."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from propagator.settings import Settings
from propagator.settings.webhooks import WebhookSettings, resolve_webhooks


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def ids(self) -> list[int]:
        return [int(change["id"]) for change in self.payload["changes"]]


@dataclass
class Receiver:
    """A ``ThreadingHTTPServer`` on a free loopback port; ``answer`` decides each status."""

    answer: Callable[[Received], int] = lambda _request: 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    connections: set[socket.socket] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if receiver.delay:
                    time.sleep(receiver.delay)
                request = Received({k.lower(): v for k, v in self.headers.items()}, body, 0)
                request.status = receiver.answer(request)
                with receiver.lock:
                    receiver.requests.append(request)
                reply = b"ok" if request.status < 300 else b"receiver says no"
                self.send_response(request.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down as a crashed receiver is: no listener, and kept connections cut."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            kept, self.connections = self.connections, set()
        for connection in kept:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_ids(self) -> list[int]:
        return [i for request in self.accepted() for i in request.ids]


@contextmanager
def receiving(**options: Any) -> Iterator[Receiver]:
    receiver = Receiver(**options).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def webhook(settings: Settings, url: str, **options: Any) -> WebhookSettings:
    """One endpoint as ``[[webhooks]]`` would configure it, quick to retry."""
    table = {
        "name": "hook",
        "url": url,
        "max_wait": "50ms",
        "retry_initial": "100ms",
        "retry_max": "1s",
        **options,
    }
    (resolved,) = resolve_webhooks([table], [settings], environ={})
    return resolved
