"""Which webhook URLs may be posted to, and what of them logs and status may show."""

from __future__ import annotations

import pytest

from propagator.core.webhook_urls import origin_of, url_refusal


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/in", "must be an https:// URL"),
        ("file:///etc/passwd", "must be an https:// URL"),
        ("hooks.example.com/in", "must be an https:// URL"),
        ("https:///in", "has no host"),
        ("https://", "has no host"),
        ("https://hooks.example.com/in#part", "must not have a #fragment"),
        ("https://hooks.example.com:99999/in", "is not a valid URL"),
    ],
)
def test_urls_that_are_not_https_to_a_host_are_refused(url: str, reason: str) -> None:
    """Other schemes, a missing host, a fragment or a bad port are refused, naming ``url``."""
    refusal = url_refusal(url)
    assert refusal is not None
    key, why = refusal
    assert key == "url"
    assert reason in why


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://169.254.169.254/latest/meta-data", "cloud metadata address"),
        ("https://169.254.170.2/v2/credentials", "cloud metadata address"),
        ("https://[fd00:ec2::254]/latest", "cloud metadata address"),
        ("https://[::ffff:169.254.169.254]/latest", "cloud metadata address"),
        ("https://metadata.google.internal/computeMetadata/v1", "cloud metadata service"),
        ("https://METADATA.google.internal./computeMetadata/v1", "cloud metadata service"),
        ("https://169.254.1.1/hooks", "link-local address"),
        ("https://[fe80::1]/hooks", "link-local address"),
        ("https://[fe80::1%25eth0]/hooks", "link-local address"),
        ("https://[::ffff:169.254.1.1]/hooks", "link-local address"),
        ("https://224.0.0.1/hooks", "not a unicast address"),
        ("https://[ff02::1]/hooks", "not a unicast address"),
        ("https://0.0.0.0/hooks", "not a unicast address"),
        ("https://[::]/hooks", "not a unicast address"),
    ],
)
def test_metadata_link_local_and_non_unicast_hosts_are_refused(url: str, reason: str) -> None:
    """Cloud metadata services, link-local, multicast and unspecified addresses are refused."""
    refusal = url_refusal(url)
    assert refusal is not None
    key, why = refusal
    assert key == "url"
    assert "is refused" in why
    assert reason in why


def test_allowing_insecure_http_does_not_allow_a_metadata_address() -> None:
    """``allow_insecure_http`` loosens the scheme rule only, never the address rules."""
    assert url_refusal("http://169.254.169.254/latest", allow_insecure_http=True) is not None
    assert url_refusal("http://[fe80::1]/hooks", allow_insecure_http=True) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://127.8.0.1/hooks",
        pytest.param("http://[::1]:8080/hooks"),
        "http://localhost:8080/hooks",
        "http://LOCALHOST/hooks",
        "http://receiver.localhost/hooks",
    ],
)
def test_plain_http_is_allowed_to_loopback(url: str) -> None:
    """A receiver on the same machine may be plain http."""
    assert url_refusal(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/in",
        "http://10.0.0.5:8080/in",
        "http://localhost.example.com/in",
    ],
)
def test_plain_http_elsewhere_needs_allow_insecure_http(url: str) -> None:
    """Plain http to another host is refused unless ``allow_insecure_http`` says otherwise."""
    refusal = url_refusal(url)
    assert refusal is not None
    key, why = refusal
    assert key == "url"
    assert "must use https://" in why
    assert url_refusal(url, allow_insecure_http=True) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in?token=abc",
        "https://10.0.0.5:8443/in",
        "https://[2001:db8::5]/in",
        "https://user:pass@hooks.example.com/in",
        "https://hooks.example.com",
    ],
)
def test_https_to_an_ordinary_host_is_fine(url: str) -> None:
    """https to a named host or an ordinary address is accepted as it is."""
    assert url_refusal(url) is None


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://hooks.example.com/in/s3cr3t-path-token?key=q-token", "https://hooks.example.com"),
        ("https://alice:pa55word@hooks.example.com:8443/in", "https://hooks.example.com:8443"),
        ("http://[::1]:8080/hooks/t0ken", "http://[::1]:8080"),
        ("https://Hooks.Example.COM/in", "https://hooks.example.com"),
        ("https://hooks.example.com", "https://hooks.example.com"),
    ],
)
def test_the_origin_keeps_scheme_host_and_port_only(url: str, origin: str) -> None:
    """Logs and status show scheme, host and port: no path, query, user or password."""
    shown = origin_of(url)
    assert shown == origin
    for secret in ("s3cr3t", "token", "alice", "pa55word", "t0ken", "/in", "?"):
        assert secret not in shown
