"""HTTP/1.1 on the wire: a request head parsed strictly, answers as values.

Everything a client sends is bounded and checked before a handler sees it: the
request line, header names and values, ``Content-Length`` (ASCII digits only),
the request target (origin or absolute form) and the query string (a bounded
number of parameters, no control characters). Anything else is a ``BadRequest``
carrying the status and the one-line reason the client gets back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "BadRequest",
    "Head",
    "Request",
    "Response",
    "parse_content_length",
    "parse_head",
    "parse_query",
    "split_target",
]

JSON_TYPE: Final = "application/json"
TEXT_TYPE: Final = "text/plain; charset=utf-8"

MAX_QUERY_FIELDS: Final = 32
"""More query parameters than this in one request is a 400, whatever their names."""
MAX_CONTENT_LENGTH_DIGITS: Final = 12

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(r"HTTP/1\.[0-9]")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_IN_QUERY: Final = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(Exception):
    """The request cannot be served as sent: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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

    def basic_password(self) -> str | None:
        """The password of an ``Authorization: Basic …`` header (a browser's prompt), if any."""
        scheme, _, encoded = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, colon, password = decoded.partition(":")
        return password if colon and password else None


@dataclass(frozen=True, slots=True)
class Response:
    """An answer; ``Content-Length`` and ``Connection: close`` are added when sent."""

    status: int
    body: bytes = b""
    content_type: str = TEXT_TYPE
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        body = json.dumps(payload, default=str, separators=(",", ":")).encode() + b"\n"
        return cls(status, body, JSON_TYPE, headers)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = TEXT_TYPE) -> Response:
        return cls(status, text.encode(), content_type)

    @classmethod
    def html(cls, html: str, status: int = 200) -> Response:
        return cls(status, html.encode(), "text/html; charset=utf-8")

    @classmethod
    def error(
        cls, status: int, message: str, *, headers: tuple[tuple[str, str], ...] = (), **extra: Any
    ) -> Response:
        return cls.json({"error": message, **extra}, status, headers)


@dataclass(frozen=True, slots=True)
class Head:
    """The request line and headers, checked; ``target_host`` from an absolute-form target."""

    method: str
    version: str
    path: str
    query: str
    headers: Mapping[str, str]
    target_host: str | None = None


def parse_head(head: bytes) -> Head:
    """Parse ``head`` (up to and including the blank line) or raise ``BadRequest``."""
    text = head.decode("latin-1")  # every byte decodes; what is not ASCII fails the checks
    request_line, *header_lines = text.removesuffix("\r\n\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _VERSION.fullmatch(parts[2]):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise BadRequest(400, "malformed method")
    if not target.isascii() or _CONTROL_IN_QUERY.search(target):
        raise BadRequest(400, "the request target must be printable ASCII")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        value = value.strip(" \t")
        if _CONTROL.search(value):
            raise BadRequest(400, "control character in a header value")
        key = name.lower()
        if key in ("host", "content-length") and key in headers and headers[key] != value:
            raise BadRequest(400, f"conflicting {name} headers")
        headers[key] = value
    path, query, target_host = split_target(target)
    return Head(method, version, path, query, headers, target_host)


def split_target(target: str) -> tuple[str, str, str | None]:
    """``(path, query, host)`` of an origin-form (``/a?b``) or absolute-form target."""
    if target.startswith("/"):
        without_fragment = target.partition("#")[0]
        path, _, query = without_fragment.partition("?")
        return path, query, None
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        try:
            parts = urlsplit(target)
            host = parts.hostname
        except ValueError:
            raise BadRequest(400, "malformed request target") from None
        path = parts.path or "/"
        if not path.startswith("/"):
            raise BadRequest(400, "malformed request target")
        return path, parts.query, host or ""
    raise BadRequest(400, "malformed request target")


def parse_content_length(headers: Mapping[str, str], max_body_bytes: int) -> int:
    """The body length announced (0 without one); ASCII digits only, at most the limit."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(411, "chunked bodies are not accepted; send Content-Length")
    text = headers.get("content-length", "") or "0"
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_CONTENT_LENGTH_DIGITS:
        raise BadRequest(400, "malformed Content-Length")
    length = int(text)
    if length > max_body_bytes:
        raise BadRequest(413, "request body too large")
    return length


def parse_query(query: str) -> dict[str, list[str]]:
    """Query parameters (blank values kept); too many, or control characters, is a 400."""
    try:
        parsed = parse_qs(
            query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="replace"
        )
    except ValueError:
        raise BadRequest(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None
    for name, values in parsed.items():
        if _CONTROL_IN_QUERY.search(name) or any(_CONTROL_IN_QUERY.search(v) for v in values):
            raise BadRequest(400, "control character in a query parameter")
    return parsed
