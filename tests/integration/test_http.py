"""The HTTP server on real sockets: every route, bad requests, slow and concurrent clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from propagator.core.redact import register_secret
from propagator.observability.http import Request, Response, bearer_protected
from propagator.observability.mapping_metrics import MappingMetrics
from tests.helpers import wait_until
from tests.integration.http_support import Running, raw, request, serving, status_line

SECRET = "http-status-secret"


@pytest.fixture
def running() -> Iterator[Running]:
    with serving() as server:
        yield server


@pytest.fixture
def impatient() -> Iterator[Running]:
    with serving(request_timeout=0.5) as server:
        yield server


def test_metrics_route_serves_parseable_prometheus_text(running: Running) -> None:
    """GET /metrics answers the registry in the Prometheus text format, counters included."""
    MappingMetrics(running.metrics, "default").record_batch("event", applied=5)
    answer = request(running.port, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert answer.headers["connection"] == "close"
    assert int(answer.headers["content-length"]) == len(answer.body)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.body.decode())
        for s in family.samples
    }
    key = (("mapping", "default"), ("source", "event"))
    assert samples[("propagator_rows_applied_total", key)] == 5


def test_healthz_follows_the_liveness_callable(running: Running) -> None:
    """/healthz is 200 {"status":"ok"} while alive, 503 when not, 503 when the check raises."""
    answer = request(running.port, "GET", "/healthz")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})
    assert answer.headers["content-type"] == "application/json"
    running.probe.alive = False
    assert request(running.port, "GET", "/healthz").status == 503
    running.probe.alive, running.probe.fail = True, True
    assert request(running.port, "GET", "/healthz").status == 503


def test_healthz_tracks_the_loop_tick_through_metrics() -> None:
    """With metrics.loop_alive as liveness, /healthz turns 503 when ticks stop."""
    with serving() as running:
        running.metrics.mark_loop_tick()
        running.probe.check = lambda: running.metrics.loop_alive(0.3)
        assert request(running.port, "GET", "/healthz").status == 200
        wait_until(
            lambda: request(running.port, "GET", "/healthz").status == 503,
            timeout=5,
            what="healthz to notice the loop stopped ticking",
        )


def test_readyz_answers_503_with_reasons_then_200(running: Running) -> None:
    """/readyz gives the reasons it is not ready, redacted, and 200 once ready."""
    running.probe.ready = False
    running.probe.reasons = ["catch-up reconcile running", f"postgresql://u:{SECRET}@h/db down"]
    register_secret(SECRET)
    answer = request(running.port, "GET", "/readyz")
    assert answer.status == 503
    assert answer.json()["status"] == "not_ready"
    assert answer.json()["reasons"][0] == "catch-up reconcile running"
    assert SECRET.encode() not in answer.body
    running.probe.ready, running.probe.reasons = True, []
    answer = request(running.port, "GET", "/readyz")
    assert (answer.status, answer.json()) == (200, {"status": "ready", "reasons": []})
    running.probe.fail = True
    assert request(running.port, "GET", "/readyz").status == 503


def test_status_returns_the_callable_as_json_with_passwords_masked(running: Running) -> None:
    """/status serialises the status dict (non-JSON values as text) and masks URL passwords."""
    running.probe.status = {
        "state": "running",
        "lag_seconds": 0.05,
        "production": f"postgresql://mirror:{SECRET}@prod/db",
        "started": time.gmtime(0),
    }
    answer = request(running.port, "GET", "/status")
    assert answer.status == 200
    body = answer.json()
    assert body["state"] == "running"
    assert body["lag_seconds"] == 0.05
    assert body["production"] == "postgresql://mirror:***@prod/db"
    assert SECRET.encode() not in answer.body


def test_a_failing_handler_is_a_500_and_the_server_keeps_serving(running: Running) -> None:
    """An exception in the status callable answers 500, then the next request works."""
    running.probe.fail = True
    answer = request(running.port, "GET", "/status")
    assert answer.status == 500
    assert answer.json() == {"error": "internal error"}
    running.probe.fail = False
    assert request(running.port, "GET", "/status").status == 200


def test_unknown_path_is_404_and_wrong_method_is_405(running: Running) -> None:
    """404 for an unknown path; 405 with an Allow header for a known path and wrong method."""
    assert request(running.port, "GET", "/nothing-here").status == 404
    answer = request(running.port, "POST", "/metrics", body=b"x")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


def test_head_answers_headers_with_the_get_length_and_no_body(running: Running) -> None:
    """HEAD on a GET route sends the headers of the GET answer and no body."""
    get = request(running.port, "GET", "/healthz")
    response = raw(running.port, b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_line(response) == "HTTP/1.1 200 OK"
    assert f"Content-Length: {len(get.body)}".encode() in head
    assert body == b""


def test_query_string_does_not_change_routing(running: Running) -> None:
    """A query string is parsed apart from the path; absolute-form targets work too."""
    assert request(running.port, "GET", "/healthz?verbose=1").status == 200
    response = raw(running.port, b"GET http://localhost/healthz HTTP/1.1\r\n\r\n")
    assert status_line(response) == "HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"garbage\r\n\r\n", "400"),
        (b"\x00\xff\xfe binary \x01\r\n\r\n", "400"),
        (b"GET /healthz\r\n\r\n", "400"),
        (b"GET /healthz SPDY/3\r\n\r\n", "400"),
        (b"get /healthz HTTP/1.1\r\n\r\n", "400"),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n", "400"),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: -4\r\n\r\n", "400"),
        (b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n", "411"),
        (b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n\r\n", "413"),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", "431"),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: \xb2\r\n\r\n", "400"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", "400"),
    ],
)
def test_garbage_requests_get_a_clear_4xx(running: Running, data: bytes, expected: str) -> None:
    """Malformed or oversized requests get a 4xx and close; the server stays up."""
    response = raw(running.port, data)
    assert status_line(response).split(" ")[1] == expected, response[:200]
    assert b"Connection: close" in response
    assert request(running.port, "GET", "/healthz").status == 200


def test_a_client_that_disconnects_mid_request_is_harmless(running: Running) -> None:
    """Half a request then a hang-up leaves nothing behind and no error for others."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(b"GET /metr")
    assert request(running.port, "GET", "/healthz").status == 200
    wait_until(lambda: not running.server._connections, timeout=5, what="connections closed")


def test_slow_client_gets_408_and_does_not_block_others(impatient: Running) -> None:
    """A client that never finishes its request is cut off after the timeout; others are served."""
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow")
        started = time.monotonic()
        assert request(impatient.port, "GET", "/healthz").status == 200
        response = b""
        while chunk := slow.recv(65536):
            response += chunk
        waited = time.monotonic() - started
    assert status_line(response).startswith("HTTP/1.1 408")
    assert waited < 5


def test_concurrent_requests_are_all_answered(running: Running) -> None:
    """Fifty simultaneous clients on every route each get a complete answer."""
    paths = ["/metrics", "/healthz", "/readyz", "/status"] * 13

    def fetch(path: str) -> int:
        answer = request(running.port, "GET", path)
        assert int(answer.headers["content-length"]) == len(answer.body)
        return answer.status

    with ThreadPoolExecutor(max_workers=26) as pool:
        statuses = list(pool.map(fetch, paths))
    assert statuses == [200] * len(paths)


def test_routes_can_be_added_with_methods_bodies_and_tokens(running: Running) -> None:
    """add_route extends the table: a POST handler sees its body, query and bearer token."""

    async def echo(req: Request) -> Response:
        return Response.json(
            {
                "body": req.body.decode(),
                "dry": req.query_value("dry"),
                "token": req.bearer_token(),
            },
            status=202,
        )

    running.server.add_route("POST", "/echo", echo)
    answer = request(
        running.port,
        "POST",
        "/echo?dry=1",
        body=b"hello",
        headers={"Authorization": "Bearer abc123", "Content-Type": "text/plain"},
    )
    assert answer.status == 202
    assert answer.json() == {"body": "hello", "dry": "1", "token": "abc123"}
    assert request(running.port, "GET", "/echo").status == 405
    assert running.server.routes()["/echo"] == ("POST",)


def test_port_zero_reports_the_bound_port_and_stop_releases_it() -> None:
    """With port 0 the real port is exposed; after stop() nothing listens there."""
    with serving() as running:
        port = running.port
        assert port > 0
        assert request(port, "GET", "/healthz").status == 200
        running.call(running.server.stop)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_bearer_protected_routes_refuse_without_the_right_token(running: Running) -> None:
    """A protected route answers 401 without or with a wrong token, 403 with none configured."""
    configured: list[str | None] = ["s3cret-token"]

    async def reconcile_now(_request: Request) -> Response:
        return Response.json({"accepted": True}, status=202)

    running.server.add_route(
        "POST", "/reconcile", bearer_protected(lambda: configured[0], reconcile_now)
    )
    port = running.port
    assert request(port, "POST", "/reconcile", body=b"").status == 401
    wrong = request(port, "POST", "/reconcile", body=b"", headers={"Authorization": "Bearer no"})
    assert wrong.status == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    good = request(
        port, "POST", "/reconcile", body=b"", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert (good.status, good.json()) == (202, {"accepted": True})
    configured[0] = None
    refused = request(
        port, "POST", "/reconcile", body=b"", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert refused.status == 403


def test_html_responses_carry_their_content_type(running: Running) -> None:
    """Response.html serves a page with text/html and its exact length."""

    async def page(_request: Request) -> Response:
        return Response.html("<!doctype html><title>propagator</title>")

    running.server.add_route("GET", "/", page)
    answer = request(running.port, "GET", "/")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.body == b"<!doctype html><title>propagator</title>"
