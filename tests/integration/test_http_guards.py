"""The HTTP server's guards on real sockets: Host check, read tokens, slots, nosniff."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from propagator.errors import ConfigurationError
from propagator.observability.http import Request, Response
from propagator.observability.pages import add_web_routes
from tests.helpers import wait_until
from tests.integration.http_support import Running, raw, request, serving, status_line

API_TOKEN = "guards-api-token-0b7d"
READ_TOKEN = "guards-read-token-5e21"
READ_ROUTES = ("/", "/status", "/history")
OPEN_ROUTES = ("/healthz", "/readyz", "/metrics")


@pytest.fixture
def protected() -> Iterator[Running]:
    """The daemon's routes with read protection on, an API token and a read token."""
    with serving() as running:
        add_web_routes(
            running.server,
            status=running.probe.status_payload,
            history=None,
            reconcile=None,
            api_token=API_TOKEN,
            read_protection=True,
            read_token=READ_TOKEN,
        )
        yield running


def refused(running: Running, reason: str) -> float:
    """propagator_http_refused_total for ``reason``, read from the server's registry."""
    value = running.metrics.registry.get_sample_value(
        "propagator_http_refused_total", {"reason": reason}
    )
    assert value is not None
    return value


def basic(password: str, user: str = "operator") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_answer_says_nosniff() -> None:
    """200, 404 (which echoes the path), 400 and 503 answers all carry nosniff."""
    with serving() as running:
        for path in ("/healthz", "/metrics", "/status", "/no/<script>"):
            answer = request(running.port, "GET", path)
            assert answer.headers["x-content-type-options"] == "nosniff", path
        assert b"nosniff" in raw(running.port, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    with (
        serving(max_connections=1) as running,
        socket.create_connection(("127.0.0.1", running.port)) as held,
    ):
        running.server.add_route("GET", "/hold", _hold_forever)
        held.sendall(b"GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
        limits = running.server.limits
        wait_until(
            lambda: (limits.open, limits.waiting) == (1, 0), what="the held request in service"
        )
        busy = raw(running.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status_line(busy).startswith("HTTP/1.1 503")
        assert b"X-Content-Type-Options: nosniff" in busy


async def _hold_forever(_request: Request) -> Response:
    await asyncio.Event().wait()
    return Response.text("never")  # pragma: no cover


def test_a_foreign_host_is_refused_on_every_route(protected: Running) -> None:
    """A Host naming another site is 421 everywhere; loopback names and addresses pass."""
    for path in protected.server.routes():
        answer = request(protected.port, "GET", path, headers={"Host": "rebind.attacker.example"})
        assert answer.status == 421, path
        assert "Host" in answer.json()["error"]
    for host in ("localhost", "LOCALHOST:1", "127.0.0.1:9753", "127.0.0.2", "[::1]:80"):
        assert request(protected.port, "GET", "/healthz", headers={"Host": host}).status == 200
    for host in ("", "a b", "evil:port", "[::1"):
        assert request(protected.port, "GET", "/healthz", headers={"Host": host}).status == 400
    absolute = raw(protected.port, b"GET http://evil.example/healthz HTTP/1.1\r\n\r\n")
    assert status_line(absolute).startswith("HTTP/1.1 421")
    assert status_line(raw(protected.port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(
        "400 Bad Request"
    )
    assert status_line(raw(protected.port, b"GET /healthz HTTP/1.0\r\n\r\n")).endswith("200 OK")
    assert refused(protected, "host") >= 4


def test_configured_names_are_accepted() -> None:
    """Names in allowed_hosts (exact or a .domain) pass; others still get 421."""
    with serving(allowed_hosts=("propagator", ".svc.cluster.local")) as running:
        for host, status in (
            ("propagator:9753", 200),
            ("propagator.ns.svc.cluster.local", 200),
            ("propagator.evil", 421),
        ):
            assert request(running.port, "GET", "/healthz", headers={"Host": host}).status == status


def test_read_protection_needs_a_token_on_the_three_read_routes(protected: Running) -> None:
    """No or a wrong token: 401 with a Basic challenge; the read or API token, either way: 200."""
    port = protected.port
    for path in READ_ROUTES:
        for headers in ({}, bearer("wrong"), basic("wrong"), basic(""), {"Authorization": "x"}):
            answer = request(port, "GET", path, headers=headers)
            assert answer.status == 401, (path, headers)
            assert "Basic" in answer.headers["www-authenticate"]
            assert READ_TOKEN.encode() not in answer.body
        for headers in (
            bearer(READ_TOKEN),
            basic(READ_TOKEN),
            basic(READ_TOKEN, ""),
            bearer(API_TOKEN),
        ):
            answer = request(port, "GET", path, headers=headers)
            assert answer.status == (404 if path == "/history" else 200), (path, headers)
    for path in OPEN_ROUTES:
        assert request(port, "GET", path).status == 200, path
    page = request(port, "GET", "/", headers=basic(READ_TOKEN))
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b'id="role"' in page.body
    assert READ_TOKEN.encode() not in page.body
    assert API_TOKEN.encode() not in page.body


def test_the_read_token_never_acts(protected: Running) -> None:
    """POST /reconcile takes only the API token as Bearer: not the read token, not Basic."""
    for headers in (bearer(READ_TOKEN), basic(API_TOKEN), basic(READ_TOKEN)):
        answer = request(protected.port, "POST", "/reconcile", body=b"", headers=headers)
        assert answer.status == 401, headers
    answer = request(protected.port, "POST", "/reconcile", body=b"", headers=bearer(API_TOKEN))
    assert answer.status == 503  # past the token: this test server cannot reconcile


def test_read_protection_without_any_token_refuses_reads() -> None:
    """Protection on and no token configured: the read routes answer 403, probes stay up."""
    with serving() as running:
        add_web_routes(
            running.server,
            status=running.probe.status_payload,
            history=None,
            reconcile=None,
            api_token=None,
            read_protection=True,
        )
        for path in READ_ROUTES:
            assert request(running.port, "GET", path, headers=bearer("anything")).status == 403
        assert request(running.port, "GET", "/healthz").status == 200


def test_an_idle_connection_is_closed_after_the_first_byte_timeout() -> None:
    """A client that sends nothing gets 408 after first_byte_timeout, not request_timeout."""
    with serving(first_byte_timeout=0.3, request_timeout=30) as running:
        started = time.monotonic()
        answer = raw(running.port, b"")
        waited = time.monotonic() - started
        assert status_line(answer).startswith("HTTP/1.1 408")
        assert waited < 5
        assert refused(running, "timeout") == 1


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed ``sock`` without answering (end of stream or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_waiting_connections_make_room_for_a_prompt_client() -> None:
    """With every slot held by silent clients, a probe evicts the oldest and is answered."""
    with serving(max_connections=4, max_connections_per_client=4) as running:
        limits = running.server.limits
        idle: list[socket.socket] = []
        try:
            for turn in range(3):
                while len(idle) < 4 + turn:
                    idle.append(socket.create_connection(("127.0.0.1", running.port), timeout=5))
                wait_until(
                    lambda: (limits.open, limits.waiting) == (4, 4), what="four idle connections"
                )
                assert request(running.port, "GET", "/healthz").status == 200
                assert closed_by_server(idle[turn]), "the oldest waiting connection stayed"
            assert limits.evicted == 3
            assert refused(running, "evicted") == 3
        finally:
            for sock in idle:
                sock.close()


def test_a_probe_accepted_in_the_same_burst_as_a_flood_is_answered() -> None:
    """A probe's request already sent is never the one evicted by the connections behind it.

    The server's loop is held while the probe connects and sends its request and ten
    silent connections from the same address queue behind it, so all eleven are
    accepted in one burst, before any of them is read: the per-client limit of four
    makes seven evictions, and none may fall on the probe.
    """
    with serving(max_connections=100, max_connections_per_client=4) as running:
        held, release = threading.Event(), threading.Event()

        def hold_the_loop() -> None:
            held.set()
            release.wait(10)

        running.loop.call_soon_threadsafe(hold_the_loop)
        assert held.wait(5)
        idle: list[socket.socket] = []
        probe = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        try:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            idle += [socket.create_connection(("127.0.0.1", running.port)) for _ in range(10)]
            release.set()
            answer = b""
            while chunk := probe.recv(65536):
                answer += chunk
            assert status_line(answer).startswith("HTTP/1.1 200"), answer[:200]
            wait_until(lambda: running.server.limits.evicted >= 7, what="the burst's evictions")
        finally:
            release.set()
            probe.close()
            for sock in idle:
                sock.close()


def test_post_reconcile_names_one_mapping_or_all() -> None:
    """?mapping=NAME reconciles that mapping; an unknown name is a 400 with its reason."""
    asked: list[str | None] = []

    async def reconcile(mapping: str | None = None) -> dict[str, object]:
        if mapping == "nope":
            raise ConfigurationError("no mapping 'nope' here; the mappings are: jobs, orders")
        asked.append(mapping)
        return {"source": "manual", "mapping": mapping}

    with serving() as running:
        add_web_routes(
            running.server,
            status=running.probe.status_payload,
            history=None,
            reconcile=reconcile,
            api_token=API_TOKEN,
        )
        answer = request(
            running.port, "POST", "/reconcile?mapping=orders", headers=bearer(API_TOKEN)
        )
        assert answer.status == 200
        assert request(running.port, "POST", "/reconcile", headers=bearer(API_TOKEN)).status == 200
        refused = request(
            running.port, "POST", "/reconcile?mapping=nope", headers=bearer(API_TOKEN)
        )
        assert refused.status == 400
        assert b"no mapping 'nope' here" in refused.body
    assert asked == ["orders", None]
