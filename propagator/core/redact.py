"""Masking of passwords in URLs and in any text that might echo them.

Every log line, report, error and HTTP answer passes through here, so a
password given in ``PRODUCTION_DATABASE_URL`` never leaves the process.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["mask_url", "redact", "redact_data", "register_secret"]

_MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
# The password runs to the LAST "@" of the authority (as urlsplit reads it), so an
# unencoded "@" inside it cannot leave a fragment behind.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^/?#\s]*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s]*", re.I)
# Not after "?" or "&": URL query passwords are masked above, keeping the options that follow.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>(?<![?&])\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I
)


def register_secret(secret: str | None) -> None:
    """Remember a secret so ``redact`` removes it from any text, however it is embedded."""
    if secret and len(secret) >= 3:
        with _lock:
            _secrets.add(secret)
            _secrets.add(unquote(secret))


def secrets_of_url(url: str) -> list[str]:
    """Passwords carried by a URL, in its userinfo or as a ``password=`` query option."""
    parts = urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [value for name, value in parse_qsl(parts.query) if name == "password" and value]
    return found


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (user, host and options kept)."""
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + _MASK + "@", url)
    return _QUERY_PASSWORD.sub(r"\g<1>" + _MASK, masked)


def redact(text: str) -> str:
    """Remove every registered secret and every URL or keyword password from text."""
    text = mask_url(text)
    text = _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + _MASK, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def redact_data(value: Any) -> Any:
    """Plain data (str, numbers, None, dicts, lists) with every password masked."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {redact(str(k)): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_data(v) for v in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return redact(str(value))
