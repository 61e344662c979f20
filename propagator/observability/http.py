"""The daemon's HTTP face: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

A deliberately small HTTP/1.1 server on ``asyncio.start_server``: a handful of
routes do not justify a web framework and its dependency tree. One request per
connection (``Connection: close``), bounded header and body sizes, a deadline on
reading the request and on writing the answer, and every handler failure turned
into a 500: a garbage request or a slow client can never hurt the daemon's loop.

Hostile clients are expected. A connection must send its first byte within
``first_byte_timeout`` and its whole request within ``request_timeout``; when
the connection limits (in total, per client address) are reached, the oldest
connection still waiting for its request makes room (``limits``), so idle and
slow-loris connections cannot starve the probes. Every request's ``Host`` must
name this endpoint (``hostcheck``), and every answer carries
``X-Content-Type-Options: nosniff``.

Routes live in a table keyed by path; ``add_route`` extends it (``GET`` routes
answer ``HEAD`` too) and ``guard`` wraps one (for tokens), so later endpoints
need no change to the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

from propagator.core.redact import redact
from propagator.observability.auth import Handler, bearer_protected
from propagator.observability.hostcheck import HostCheck, host_of
from propagator.observability.limits import ConnectionLimits, Slot
from propagator.observability.logging import get_logger, redact_data
from propagator.observability.metrics import METRICS_CONTENT_TYPE, Metrics
from propagator.observability.wire import (
    BadRequest,
    Head,
    Request,
    Response,
    parse_content_length,
    parse_head,
    parse_query,
)

__all__ = ["Handler", "HttpServer", "Request", "Response", "bearer_protected"]

_log = get_logger(__name__)

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

# What a refused request counts as in propagator_http_refused_total.
_REFUSED_BY_STATUS: Final = {
    400: "bad_request",
    411: "bad_request",
    413: "bad_request",
    431: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    408: "timeout",
    421: "host",
}


class HttpServer:
    """Serves the daemon's endpoints; ``port`` is the bound one (useful with port 0)."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        status: Callable[[], dict[str, Any]],
        readiness: Callable[[], tuple[bool, list[str]]],
        liveness: Callable[[], bool],
        *,
        request_timeout: float = 10.0,
        first_byte_timeout: float = 3.0,
        max_header_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        max_connections: int = 256,
        max_connections_per_client: int = 32,
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.host = host
        self._requested_port = port
        self.metrics = metrics
        self._status = status
        self._readiness = readiness
        self._liveness = liveness
        self.request_timeout = request_timeout
        self.first_byte_timeout = min(first_byte_timeout, request_timeout)
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.limits = ConnectionLimits(
            max_connections,
            max_connections_per_client,
            on_evict=lambda: metrics.record_http_refused("evicted"),
        )
        self.host_check = HostCheck(host, allowed_hosts)
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._routes: dict[str, dict[str, Handler]] = {}
        self.add_route("GET", "/metrics", self._metrics_endpoint)
        self.add_route("GET", "/healthz", self._healthz_endpoint)
        self.add_route("GET", "/readyz", self._readyz_endpoint)
        self.add_route("GET", "/status", self._status_endpoint)

    # Routing.

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler``; a ``GET`` route also answers ``HEAD``."""
        method = method.upper()
        if method not in _METHODS:
            raise ValueError(f"unsupported method {method}")
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        self._routes.setdefault(path, {})[method] = handler

    def guard(self, path: str, wrap: Callable[[Handler], Handler]) -> None:
        """Wrap every handler of ``path`` (already routed) with ``wrap``, e.g. a token check."""
        methods = self._routes.get(path)
        if methods is None:
            raise ValueError(f"no route {path!r} to guard")
        for method, handler in methods.items():
            methods[method] = wrap(handler)

    def routes(self) -> dict[str, tuple[str, ...]]:
        """Every path with the methods it answers (for documentation and tests)."""
        return {path: self._allowed(methods) for path, methods in self._routes.items()}

    @staticmethod
    def _allowed(methods: Mapping[str, Handler]) -> tuple[str, ...]:
        allowed = set(methods)
        if "GET" in allowed:
            allowed.add("HEAD")
        return tuple(sorted(allowed))

    # Lifecycle.

    @property
    def port(self) -> int:
        """The port actually listened on (the requested one until ``start``)."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._accept, self.host, self._requested_port, limit=self.max_header_bytes
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        _log.info("http_server_started", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening, give open requests a moment, then cancel what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        pending = set(self._connections)
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=1.0)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        _log.info("http_server_stopped")

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # Connections.

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        slot = self.limits.admit(
            client, writer.transport.abort, _request_arrived(reader, writer, self.max_header_bytes)
        )
        try:
            if slot is None:
                self.metrics.record_http_refused("busy")
                async with asyncio.timeout(self.first_byte_timeout):
                    await self._write(writer, Response.error(503, "too many connections"))
                await self._discard_input(reader, writer)
            else:
                await self._serve_connection(reader, writer, slot)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception as error:  # a bug in here must never reach the event loop
            _log.error("http_connection_failed", error=error)
        finally:
            if slot is not None:
                self.limits.release(slot)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            if task is not None:
                self._connections.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot
    ) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        local = writer.get_extra_info("sockname")
        local_address = str(local[0]) if isinstance(local, tuple) and local else ""
        head_only = False
        unread = True
        try:
            request = await self._receive(reader, peer_text, local_address)
        except BadRequest as error:
            response = Response.error(error.status, error.message)
        except TimeoutError:
            response = Response.error(408, "request not received in time")
        except asyncio.IncompleteReadError:
            return  # the client went away before finishing its request
        else:
            unread = False
            self.limits.serving(slot)
            head_only = request.method == "HEAD"
            response = await self._dispatch(request)
        refused = _REFUSED_BY_STATUS.get(response.status)
        if refused is not None:
            self.metrics.record_http_refused(refused)
        async with asyncio.timeout(self.request_timeout):
            await self._write(writer, response, head_only=head_only)
        if unread:
            await self._discard_input(reader, writer)

    async def _discard_input(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Half-close, then briefly read what the client sent and nobody read.

        Closing a socket with unread input resets the connection, and the client may
        lose the answer written just before; a tenth of a second is all it gets.
        """
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(0.1):
                await reader.read(self.max_header_bytes)

    async def _receive(
        self, reader: asyncio.StreamReader, peer: str, local_address: str
    ) -> Request:
        """The whole request: first byte soon, all of it within the request timeout."""
        async with asyncio.timeout(self.request_timeout):
            async with asyncio.timeout(self.first_byte_timeout):
                first = await reader.readexactly(1)
            try:
                head = first + await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, ValueError):
                raise BadRequest(431, "request header too large") from None
            if len(head) > self.max_header_bytes:
                raise BadRequest(431, "request header too large")
            parsed = parse_head(head)
            self._check_host(parsed, local_address)
            query = parse_query(parsed.query)
            length = parse_content_length(parsed.headers, self.max_body_bytes)
            body = await reader.readexactly(length) if length else b""
        return Request(
            method=parsed.method,
            path=parsed.path,
            query=query,
            headers=parsed.headers,
            body=body,
            peer=peer,
        )

    def _check_host(self, head: Head, local_address: str) -> None:
        """400 for a missing (HTTP/1.1) or malformed Host, 421 for one naming another site."""
        value = head.target_host if head.target_host is not None else head.headers.get("host")
        if value is None:
            if head.version == "HTTP/1.1":
                raise BadRequest(400, "missing Host header")
            return  # HTTP/1.0 without Host: not a browser
        if head.target_host is not None and ":" in value:
            value = f"[{value}]"
        host = host_of(value)
        if host is None:
            raise BadRequest(400, "malformed Host header")
        if not self.host_check.allows(host, local_address):
            raise BadRequest(421, "this endpoint does not answer to that Host (http_allowed_hosts)")

    async def _dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.error(404, "not found", path=request.path[:200])
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(self._allowed(methods))
            return Response.error(
                405, "method not allowed", allowed=allowed, headers=(("Allow", allowed),)
            )
        try:
            return await handler(request)
        except Exception as error:
            _log.error("http_handler_failed", method=request.method, path=request.path, error=error)
            return Response.error(500, "internal error")

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response, *, head_only: bool = False
    ) -> None:
        reason = _reason(response.status)
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await writer.drain()

    # Endpoints.

    async def _metrics_endpoint(self, _request: Request) -> Response:
        return Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)

    async def _healthz_endpoint(self, _request: Request) -> Response:
        try:
            alive = bool(self._liveness())
        except Exception as error:
            _log.error("liveness_check_failed", error=error)
            alive = False
        if alive:
            return Response.json({"status": "ok"})
        return Response.json({"status": "unhealthy"}, 503)

    async def _readyz_endpoint(self, _request: Request) -> Response:
        try:
            ready, reasons = self._readiness()
        except Exception as error:
            ready, reasons = False, [redact(f"readiness check failed: {error}")]
        reasons = [redact(str(reason)) for reason in reasons]
        if ready:
            return Response.json({"status": "ready", "reasons": reasons})
        return Response.json({"status": "not_ready", "reasons": reasons}, 503)

    async def _status_endpoint(self, _request: Request) -> Response:
        return Response.json(redact_data(self._status()))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _request_arrived(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
) -> Callable[[], bool]:
    """Whether a connection's whole request head is here but not yet read by its handler.

    Connections accepted in one burst are admitted before any of them is read, so a
    probe's request may be sitting in the kernel (or in the stream's buffer) while the
    burst's later arrivals look for slots to evict. Asked only when choosing a victim.
    """
    transport_socket = writer.get_extra_info("socket")

    def arrived() -> bool:
        buffered = bytes(getattr(reader, "_buffer", b""))  # the stream's unread bytes
        if b"\r\n\r\n" in buffered:
            return True
        if transport_socket is None:
            return False
        try:
            with transport_socket.dup() as sock:
                pending = sock.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        return b"\r\n\r\n" in buffered + pending

    return arrived
