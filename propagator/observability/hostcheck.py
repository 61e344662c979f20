"""Which ``Host`` headers the HTTP endpoint answers: a guard against DNS rebinding.

A web page can make a browser resolve its own name to the daemon's address and
read the answers as same-origin. Such a request always carries the page's name
in ``Host``, so the endpoint answers only to names it knows: ``localhost``, the
loopback and bind addresses, the address the client actually connected to (what
a Kubernetes probe or a Prometheus scrape of a pod IP sends) and the names in
``http_allowed_hosts`` (exact, or ``.example.com`` for a domain and everything
under it; ``*`` turns the check off). The port part of ``Host`` is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["HostCheck", "host_of"]

_NAME: Final = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_LOCAL_NAMES: Final = frozenset({"localhost"})


def host_of(value: str) -> str | None:
    """The host of a ``Host`` header, lower-case without port; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not _is_port(rest)):
            return None
        return inside if _ip(inside) is not None else None
    host, colon, port = value.rpartition(":")
    if not colon:
        host = value
    elif not _is_port(":" + port):
        return None
    host = host.removesuffix(".")
    if not host or len(host) > 253:
        return None
    if _ip(host) is not None or _NAME.fullmatch(host):
        return host
    return None


def _is_port(text: str) -> bool:
    digits = text.removeprefix(":")
    return text.startswith(":") and digits.isascii() and digits.isdigit() and len(digits) <= 5


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostCheck:
    """Decides whether a request's ``Host`` names this endpoint."""

    def __init__(self, bind_host: str, allowed: Iterable[str] = ()) -> None:
        names = {n.strip().lower().strip("[]").removesuffix(".") for n in allowed if n.strip()}
        self.any_host = "*" in names
        self._exact = frozenset(n for n in names if not n.startswith(".")) | _LOCAL_NAMES
        self._suffixes = tuple(n for n in names if n.startswith(".") and len(n) > 1)
        self._bind = _ip(bind_host.strip("[]"))

    def allows(self, host: str, local_address: str = "") -> bool:
        """Whether ``host`` (from ``host_of``) names this endpoint, reached on ``local_address``."""
        if self.any_host or host in self._exact:
            return True
        if any(host.endswith(suffix) or host == suffix[1:] for suffix in self._suffixes):
            return True
        address = _ip(host)
        if address is None:
            return False
        return (
            address.is_loopback
            or (self._bind is not None and address == self._bind)
            or address == _ip(local_address)
        )
