"""A small TCP fault proxy for loopback tests: faults on the wire between a client and a server.

Put it between the daemon and a database (give the daemon ``proxy.url_for(url)``)
and switch what the wire does at run time, for every connection or only those
whose startup packet matches (``application_name`` travels there in clear text):

* ``pass``: forward both ways untouched;
* ``latency``: hold every chunk ``latency`` seconds before forwarding it;
* ``blackhole``: stop forwarding without closing (a half-open connection): the
  proxy stops reading, so nothing is lost, and bytes flow again on ``pass``;
* ``reset_all()``: abort every connection with a TCP RST (``SO_LINGER`` 0);
* ``refuse()``: close the listening socket, so new connections are refused
  (``ECONNREFUSED``) until ``accept_again()``.

Threads only, loopback only, no dependencies: a fault test drives it from sync code.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Connection", "FaultProxy", "Mode"]

Mode = Literal["pass", "latency", "blackhole"]
_CHUNK = 65536
_POLL = 0.05
_STARTUP_BYTES = 4096


def _abort(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(eq=False)
class Connection:
    """One proxied client connection and its own fault mode."""

    client: socket.socket
    server: socket.socket
    mode: Mode = "pass"
    latency: float = 0.0
    startup: bytes = b""
    closed: threading.Event = field(default_factory=threading.Event)
    forwarded: int = 0

    def matches(self, text: str | None) -> bool:
        return text is None or text.encode() in self.startup

    def close(self, *, reset: bool = False) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            if reset:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``, with switchable faults."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"  # given to new connections
        self.latency = 0.0
        self.port = 0
        self.connections: list[Connection] = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._refusing = False
        self._closed_listener = threading.Event()
        self._thread: threading.Thread | None = None

    # Life cycle.

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"{url} needs an explicit host and port")
        return cls(parts.hostname, parts.port)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user, password kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def start(self) -> FaultProxy:
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(5)
        for conn in self.live():
            conn.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # Faults.

    def live(self, match: str | None = None) -> list[Connection]:
        """Open connections, optionally only those whose startup packet contains ``match``."""
        with self._lock:
            return [c for c in self.connections if not c.closed.is_set() and c.matches(match)]

    def set_mode(
        self, mode: Mode, *, latency: float | None = None, match: str | None = None
    ) -> int:
        """Switch open connections (those matching) to ``mode``; without ``match`` new ones too."""
        if latency is not None:
            self.latency = latency
        if match is None:
            self.mode = mode
        chosen = self.live(match)
        for conn in chosen:
            conn.latency = self.latency
            conn.mode = mode
        return len(chosen)

    def pass_through(self) -> None:
        self.set_mode("pass", latency=0.0)

    def blackhole(self, match: str | None = None) -> int:
        return self.set_mode("blackhole", match=match)

    def reset_all(self, match: str | None = None) -> int:
        """Abort open connections (those matching) with a TCP RST; return how many."""
        chosen = self.live(match)
        for conn in chosen:
            conn.close(reset=True)
        return len(chosen)

    def refuse(self) -> None:
        """Stop listening: every new connection is refused until ``accept_again``."""
        self._closed_listener.clear()
        self._refusing = True
        assert self._closed_listener.wait(5), "the proxy did not stop listening"

    def accept_again(self) -> None:
        self._refusing = False
        self._listen()

    # Plumbing.

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            listener.settimeout(_POLL)
            self.port = listener.getsockname()[1]
            self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
                if self._refusing:
                    # Closed here, between accepts, so no connection slips through.
                    if listener is not None:
                        listener.close()
                    listener = self._listener = None
                    self._closed_listener.set()
            if listener is None:
                time.sleep(_POLL)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._refusing:
                _abort(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _abort(client)
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(client, server, self.mode, self.latency)
            with self._lock:
                self.connections = [c for c in self.connections if not c.closed.is_set()]
                self.connections.append(conn)
                self.accepted += 1
            for source, sink, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump,
                    args=(conn, source, sink, upstream),
                    name="faultproxy-pump",
                    daemon=True,
                ).start()

    def _pump(
        self, conn: Connection, source: socket.socket, sink: socket.socket, upstream: bool
    ) -> None:
        wait: Callable[[float], bool] = conn.closed.wait
        try:
            while not conn.closed.is_set() and not self._stopped.is_set():
                if conn.mode == "blackhole":
                    wait(_POLL)  # read nothing: the sender's buffers fill, nothing is lost
                    continue
                readable, _, _ = select.select([source], [], [], _POLL)
                if not readable:
                    continue
                chunk = source.recv(_CHUNK)
                if not chunk:
                    break
                if upstream and len(conn.startup) < _STARTUP_BYTES:
                    conn.startup += chunk[: _STARTUP_BYTES - len(conn.startup)]
                if conn.mode == "latency" and conn.latency > 0:
                    wait(conn.latency)
                while conn.mode == "blackhole" and not conn.closed.is_set():
                    wait(_POLL)  # switched while this chunk was in hand: hold it
                sink.sendall(chunk)
                conn.forwarded += len(chunk)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
