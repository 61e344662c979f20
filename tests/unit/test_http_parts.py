"""The HTTP server's pure parts: request parsing, the Host check, connection slots, tokens."""

from __future__ import annotations

import base64
import functools

import pytest

from propagator.observability.auth import token_matches
from propagator.observability.hostcheck import HostCheck, host_of
from propagator.observability.limits import ConnectionLimits, Slot
from propagator.observability.wire import (
    BadRequest,
    Request,
    parse_content_length,
    parse_head,
    parse_query,
    split_target,
)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_a_plain_request_head_parses() -> None:
    """Request line, lower-cased headers, path and query come apart; the fragment is dropped."""
    parsed = parse_head(head("GET /history?limit=5#top HTTP/1.1", "Host: localhost:9753"))
    assert (parsed.method, parsed.path, parsed.query, parsed.version) == (
        "GET",
        "/history",
        "limit=5",
        "HTTP/1.1",
    )
    assert parsed.headers == {"host": "localhost:9753"}
    assert parsed.target_host is None


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (("GET /healthz HTTP/2.0",), 400),
        (("GET  /healthz HTTP/1.1",), 400),
        (("GET //healthz\x00 HTTP/1.1",), 400),
        (("GET * HTTP/1.1",), 400),
        (("GET healthz HTTP/1.1",), 400),
        (("GET http://[::1/ HTTP/1.1",), 400),
        (("GET /healthz HTTP/1.1", "Bad Name: x"), 400),
        (("GET /healthz HTTP/1.1", "X-Ctl: a\x01b"), 400),
        (("GET /healthz HTTP/1.1", " folded: x"), 400),
        (("GET /healthz HTTP/1.1", "Host: a", "Host: b"), 400),
        (("GET /healthz HTTP/1.1", "Content-Length: 1", "Content-Length: 2"), 400),
    ],
)
def test_malformed_heads_are_400(lines: tuple[str, ...], status: int) -> None:
    """Bad request lines, header names, control characters and conflicting headers are 400."""
    with pytest.raises(BadRequest) as refused:
        parse_head(head(*lines))
    assert refused.value.status == status


def test_targets_in_origin_and_absolute_form() -> None:
    """``//x`` stays a path (never a host); an absolute target names its host."""
    assert split_target("//healthz?a=1") == ("//healthz", "a=1", None)
    assert split_target("http://LocalHost:9753/status?x") == ("/status", "x", "localhost")
    assert split_target("https://[::1]:1/") == ("/", "", "::1")


@pytest.mark.parametrize("value", ["²", "١", "１", "-1", "+1", "1 1", "0x10", "9" * 13, " "])
def test_content_length_is_ascii_digits_only(value: str) -> None:
    """A Content-Length of anything but a short run of ASCII digits is a 400."""
    with pytest.raises(BadRequest) as refused:
        parse_content_length({"content-length": value}, 1024)
    assert refused.value.status == 400


def test_content_length_limits_and_chunked() -> None:
    """No header is 0, over the limit is 413, chunked is 411."""
    assert parse_content_length({}, 10) == 0
    assert parse_content_length({"content-length": "10"}, 10) == 10
    for headers, status in (
        ({"content-length": "11"}, 413),
        ({"transfer-encoding": "gzip, chunked"}, 411),
    ):
        with pytest.raises(BadRequest) as refused:
            parse_content_length(headers, 10)
        assert refused.value.status == status


def test_query_parameters_are_bounded_and_printable() -> None:
    """Blank values are kept; too many parameters or a control character is a 400."""
    assert parse_query("a=1&b=&a=2") == {"a": ["1", "2"], "b": [""]}
    assert parse_query("k=%FF") == {"k": ["\ufffd"]}
    for query in ("&".join(f"p{n}=1" for n in range(40)), "key=%00", "key=a%0Ab", "%1F=1"):
        with pytest.raises(BadRequest):
            parse_query(query)


def test_basic_and_bearer_credentials() -> None:
    """The Basic password (any user) and the Bearer token are read; broken ones are None."""

    def request(authorization: str) -> Request:
        return Request("GET", "/", {}, {"authorization": authorization})

    basic = "Basic " + base64.b64encode(b"anyone:s3cret:with:colons").decode()
    assert request(basic).basic_password() == "s3cret:with:colons"
    assert request(basic).bearer_token() is None
    assert request("Bearer abc").bearer_token() == "abc"
    for broken in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic "):
        assert request(broken).basic_password() is None
    assert request("Basic " + base64.b64encode(b"\xff:\xfe").decode()).basic_password() is None


def test_tokens_match_exactly() -> None:
    """Only an exact token matches; empty, prefixes and longer strings do not."""
    assert token_matches("read-1", ["api-2", "read-1"])
    for given in (None, "", "read-", "read-11", "READ-1"):
        assert not token_matches(given, ["read-1"])
    assert not token_matches("", [""])


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost:9753", "localhost"),
        ("LOCALHOST.", "localhost"),
        ("10.1.2.3:9753", "10.1.2.3"),
        ("[::1]:9753", "::1"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
        ("propagator.prod.svc", "propagator.prod.svc"),
        ("evil.example:80", "evil.example"),
        ("a b", None),
        ("host:port", None),
        ("[::1", None),
        ("[nothing]", None),
        ("", None),
        ("x" * 300, None),
        ("évil.example", None),
    ],
)
def test_host_header_values(value: str, host: str | None) -> None:
    """Host headers parse to a lower-case host without port; malformed ones to None."""
    assert host_of(value) == host


def test_host_check_accepts_only_names_of_this_endpoint() -> None:
    """Loopback, the bind and connected-to addresses and configured names; not other names."""
    check = HostCheck("0.0.0.0", ["propagator", ".svc.cluster.local"])  # noqa: S104
    for host in ("localhost", "127.0.0.1", "127.8.9.1", "::1", "propagator"):
        assert check.allows(host, "10.0.0.7")
    assert check.allows("10.0.0.7", "10.0.0.7")
    assert check.allows("10.0.0.7", "::ffff:10.0.0.7")
    assert check.allows("propagator.prod.svc.cluster.local", "10.0.0.7")
    for host in ("evil.example", "10.0.0.8", "svc.cluster.local.evil", "propagator.evil"):
        assert not check.allows(host, "10.0.0.7"), host
    bound = HostCheck("192.168.1.5")
    assert bound.allows("192.168.1.5")
    assert not bound.allows("rebind.attacker.example", "127.0.0.1")
    assert HostCheck("127.0.0.1", ["*"]).allows("anything.example")
    assert HostCheck("127.0.0.1", ["[2001:DB8::1]"]).allows("2001:db8::1")


def test_a_full_limit_evicts_the_oldest_waiting_connection() -> None:
    """At the total limit the oldest waiting slot is closed for the newcomer."""
    limits = ConnectionLimits(total=3, per_client=10)
    closed: list[Slot] = []
    first = limits.admit("a", lambda: closed.append(first_slot))
    assert first is not None
    first_slot = first
    second, third = (limits.admit(c, lambda: None) for c in ("b", "c"))
    assert second is not None
    assert third is not None
    limits.serving(second)
    newcomer = limits.admit("d", lambda: None)
    assert newcomer is not None
    assert closed == [first]
    assert (limits.open, limits.waiting, limits.evicted) == (3, 2, 1)
    limits.release(first)  # the evicted connection's own cleanup: harmless
    assert limits.open == 3


def test_busy_slots_are_never_evicted() -> None:
    """When every slot serves a request, a newcomer is refused instead."""
    limits = ConnectionLimits(total=2, per_client=10)
    for client in ("a", "b"):
        slot = limits.admit(client, lambda: pytest.fail("a busy slot was evicted"))
        assert slot is not None
        limits.serving(slot)
    assert limits.admit("c", lambda: None) is None
    assert limits.open == 2


def test_the_per_client_limit_evicts_that_clients_own_connections() -> None:
    """A client at its limit pushes out its own oldest waiting connection, not another's."""
    limits = ConnectionLimits(total=100, per_client=2)
    closed: list[str] = []
    other = limits.admit("victim", lambda: closed.append("victim"))
    assert other is not None
    for n in range(5):
        name = f"flooder-{n}"
        assert limits.admit("flooder", functools.partial(closed.append, name)) is not None
    assert closed == ["flooder-0", "flooder-1", "flooder-2"]
    assert limits.open == 3
    assert limits.clients() == 2


def test_a_connection_whose_request_arrived_is_passed_over() -> None:
    """A waiting slot with its request already here is not evicted; with no other, refuse."""
    limits = ConnectionLimits(total=100, per_client=2)
    closed: list[str] = []
    probe = limits.admit("a", lambda: closed.append("probe"), request_arrived=lambda: True)
    idle = limits.admit("a", lambda: closed.append("idle"))
    assert probe is not None
    assert idle is not None
    assert limits.admit("a", lambda: closed.append("newcomer")) is not None
    assert closed == ["idle"]
    assert limits.admit("a", lambda: None, request_arrived=lambda: True) is not None
    assert closed == ["idle", "newcomer"]
    assert limits.admit("a", lambda: None) is None  # both remaining slots hold requests
    assert limits.open == 2
