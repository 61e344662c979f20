"""The daemon's HTTP face: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

A deliberately small HTTP/1.1 server on ``asyncio.start_server``: a handful of
routes do not justify a web framework and its dependency tree. One request per
connection (``Connection: close``), bounded header and body sizes, a deadline on
reading the request and on writing the answer, and every handler failure turned
into a 500: a garbage request or a slow client can never hurt the daemon's loop.

Routes live in a table keyed by path; ``add_route`` extends it (``GET`` routes
answer ``HEAD`` too), so later endpoints need no change to the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from propagator.core.redact import redact
from propagator.observability.logging import get_logger, redact_data
from propagator.observability.metrics import METRICS_CONTENT_TYPE, Metrics

__all__ = ["Handler", "HttpServer", "Request", "Response", "bearer_protected"]

_log = get_logger(__name__)

_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; header names are lower-case."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes = b""
    peer: str = ""

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer …`` header, if any."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


@dataclass(frozen=True, slots=True)
class Response:
    """An answer; ``Content-Length`` and ``Connection: close`` are added when sent."""

    status: int
    body: bytes = b""
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        body = json.dumps(payload, default=str, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, _JSON, headers)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = _TEXT) -> Response:
        return cls(status, text.encode(), content_type)

    @classmethod
    def html(cls, html: str, status: int = 200) -> Response:
        return cls(status, html.encode(), "text/html; charset=utf-8")

    @classmethod
    def error(
        cls, status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (), **extra: Any
    ) -> Response:
        return cls.json({"error": message, **extra}, status, headers)


Handler = Callable[[Request], Awaitable[Response]]


def bearer_protected(token: Callable[[], str | None], handler: Handler) -> Handler:
    """Wrap ``handler`` so it runs only with ``Authorization: Bearer <token>``.

    ``token`` is read per request (settings may change); when it returns None the
    route is refused outright: an unconfigured token never means an open door.
    """

    async def guarded(request: Request) -> Response:
        expected = token()
        if not expected:
            return Response.error(403, "this endpoint needs api_token to be configured")
        given = request.bearer_token() or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Response.error(
                401, "missing or wrong bearer token", headers=(("WWW-Authenticate", "Bearer"),)
            )
        return await handler(request)

    return guarded


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        max_header_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        max_connections: int = 64,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.metrics = metrics
        self._status = status
        self._readiness = readiness
        self._liveness = liveness
        self.request_timeout = request_timeout
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
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
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.CancelledError, TimeoutError):
            pass
        except Exception as error:  # a bug in here must never reach the event loop
            _log.error("http_connection_failed", error=error)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            if task is not None:
                self._connections.discard(task)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        head_only = False
        if len(self._connections) > self.max_connections:
            response = Response.error(503, "too many connections")
        else:
            try:
                async with asyncio.timeout(self.request_timeout):
                    request = await self._read_request(reader, peer_text)
            except _BadRequest as error:
                response = Response.error(error.status, error.message)
            except TimeoutError:
                response = Response.error(408, "request not received in time")
            except asyncio.IncompleteReadError:
                return  # the client went away before finishing its request
            else:
                head_only = request.method == "HEAD"
                response = await self._dispatch(request)
        async with asyncio.timeout(self.request_timeout):
            await self._write(writer, response, head_only=head_only)

    async def _read_request(self, reader: asyncio.StreamReader, peer: str) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request header too large") from None
        except ValueError:  # the buffer limit hit before the separator was seen
            raise _BadRequest(431, "request header too large") from None
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise _BadRequest(400, "undecodable request") from None
        request_line, *header_lines = text[:-4].split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, _version = parts
        if not method.isascii() or not method.isalpha() or not method.isupper():
            raise _BadRequest(400, "malformed method")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest(411, "chunked bodies are not accepted; send Content-Length")
        body = b""
        length_text = headers.get("content-length", "0") or "0"
        if not length_text.isdigit():
            raise _BadRequest(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise _BadRequest(413, "request body too large")
        if length:
            body = await reader.readexactly(length)
        parts_of_target = urlsplit(target)
        path = parts_of_target.path or "/"
        if not path.startswith("/"):
            raise _BadRequest(400, "malformed request target")
        return Request(
            method=method,
            path=path,
            query=parse_qs(parts_of_target.query, keep_blank_values=True),
            headers=headers,
            body=body,
            peer=peer,
        )

    async def _dispatch(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.error(404, "not found", path=request.path)
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
        self, writer: asyncio.StreamWriter, response: Response, *, head_only: bool
    ) -> None:
        reason = _reason(response.status)
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            "Cache-Control: no-store",
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
