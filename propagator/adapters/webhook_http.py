"""POSTing a webhook request: one kept connection per endpoint, every address checked.

The host is resolved here and each address is checked before connecting (a name
that resolves to a metadata service or a link-local address is refused), and
the connection goes to the checked address itself, so a second DNS answer cannot
swap it. TLS still verifies the certificate against the host name. Redirects are
not followed. Only a short prefix of the receiver's answer is kept.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from propagator.core.redact import redact
from propagator.core.webhook_urls import address_refusal, origin_of

__all__ = ["ANSWER_PREFIX_CHARS", "Answer", "DeliveryFailed", "WebhookClient"]

ANSWER_PREFIX_CHARS: Final = 200
_READ_LIMIT: Final = 64 * 1024  # what is read of an answer's body before it is dropped


class DeliveryFailed(Exception):
    """The request got no HTTP answer (refused address, DNS, connect, TLS or timeout)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "refused", "timeout" or "unreachable"


@dataclass(frozen=True, slots=True)
class Answer:
    """The receiver's answer: status, a short prefix of its body, its Retry-After."""

    status: int
    reason: str
    body_prefix: str
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        text = f"HTTP {self.status} {self.reason}".strip()
        if 300 <= self.status < 400:
            text += " (redirects are not followed)"
        if self.body_prefix:
            text += f": {self.body_prefix}"
        return text


class WebhookClient:
    """Sends requests to one URL, reusing the connection while the receiver keeps it."""

    def __init__(self, url: str, *, timeout: float, user_agent: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.secure else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.user_agent = user_agent
        self.origin = origin_of(url)
        self._connection: http.client.HTTPConnection | None = None
        self._context = ssl.create_default_context() if self.secure else None

    def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body``; an ``Answer`` for any HTTP status, ``DeliveryFailed`` for none."""
        all_headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            **headers,
        }
        for attempt in (1, 2):  # a kept connection the receiver closed is retried once, fresh
            reused = self._connection is not None
            connection = self._connection or self._connect()
            try:
                connection.request("POST", self.path, body=body, headers=all_headers)
                response = connection.getresponse()
                answer, whole = _answer(response)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                if reused and attempt == 1:
                    continue
                raise DeliveryFailed(self._say(e), kind="unreachable") from None
            except TimeoutError:
                self.close()
                raise DeliveryFailed(
                    f"{self.origin} did not answer within {self.timeout:g} s", kind="timeout"
                ) from None
            except (OSError, http.client.HTTPException) as error:
                self.close()
                raise DeliveryFailed(self._say(error), kind="unreachable") from None
            if response.will_close or not whole:
                self.close()
            else:
                self._connection = connection
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _say(self, error: BaseException) -> str:
        detail = str(error).strip() or type(error).__name__
        return redact(f"{self.origin}: {detail}")[:300]

    def _connect(self) -> http.client.HTTPConnection:
        address = self._checked_address()
        connection: http.client.HTTPConnection
        if self.secure:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

        def pinned(
            _address: tuple[str, int], timeout: float | None, source: tuple[str, int] | None
        ) -> socket.socket:
            return socket.create_connection((address, self.port), timeout, source)

        connection._create_connection = pinned  # type: ignore[attr-defined]
        return connection

    def _checked_address(self) -> str:
        refusal = address_refusal(self.host)
        if refusal:
            raise DeliveryFailed(f"{self.origin}: refused: {refusal}", kind="refused")
        started = time.monotonic()
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise DeliveryFailed(self._say(error), kind="unreachable") from None
        if time.monotonic() - started > self.timeout:
            raise DeliveryFailed(f"{self.origin}: name lookup took too long", kind="timeout")
        for *_, sockaddr in found:
            address = str(sockaddr[0])
            refusal = address_refusal(address)
            if refusal:
                raise DeliveryFailed(
                    f"{self.origin}: refused: {self.host} resolves to {refusal}", kind="refused"
                )
        return str(found[0][4][0])


def _answer(response: http.client.HTTPResponse) -> tuple[Answer, bool]:
    """The answer, and whether its body was read to the end (else the connection goes)."""
    body = response.read(_READ_LIMIT)
    whole = response.isclosed()
    if not whole:
        response.close()
    text = body.decode("utf-8", "replace")
    prefix = " ".join(text.split())[:ANSWER_PREFIX_CHARS]
    answer = Answer(response.status, response.reason or "", redact(prefix), _retry_after(response))
    return answer, whole


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    value = response.getheader("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides
