"""Which webhook URLs and addresses propagator may POST to.

A webhook URL comes from configuration, but the address it resolves to is
decided by DNS at send time, so both are checked: the URL when settings load
(one line naming the webhook and key), and every resolved address right before
connecting (a name that later resolves to a metadata service is refused too).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "METADATA_HOSTS",
    "address_refusal",
    "is_loopback_host",
    "origin_of",
    "url_refusal",
]

METADATA_HOSTS: Final = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
"""Host names of cloud metadata services (their addresses are refused below as well)."""

_METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS over IPv6
    )
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def address_refusal(host: str) -> str | None:
    """Why an address (or host name) must never be posted to, or None when it may be."""
    name = host.lower().rstrip(".")
    if name in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    address = _address(name)
    if address is None:
        return None
    if address in _METADATA_ADDRESSES:
        return f"{host} is a cloud metadata address"
    if address.is_loopback:
        return None  # ::1 counts as reserved too: loopback is decided first
    if address.is_link_local:
        return f"{host} is a link-local address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return f"{host} is not a unicast address"
    return None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: plain http is allowed there."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


def url_refusal(url: str, *, allow_insecure_http: bool = False) -> tuple[str, str] | None:
    """``(key, reason)`` when a webhook URL is refused (the key is ``url``), else None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as error:
        return "url", f"is not a valid URL ({error})"
    if parts.scheme not in ("https", "http"):
        return "url", f"must be an https:// URL (not {parts.scheme or 'a bare path'}://)"
    if not host:
        return "url", "has no host"
    if parts.fragment:
        return "url", "must not have a #fragment"
    refusal = address_refusal(host)
    if refusal:
        return "url", f"is refused: {refusal}"
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(host):
        return "url", (
            "must use https:// (plain http is allowed only to a loopback address, "
            "or with allow_insecure_http = true)"
        )
    return None


def origin_of(url: str) -> str:
    """The scheme, host and port of a URL: what logs and status show (no path, no secrets)."""
    try:
        parts: SplitResult = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"
