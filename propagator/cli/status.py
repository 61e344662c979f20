"""``propagator status``: ask a running daemon how it is doing, over its HTTP endpoint.

Reads ``/status`` (and ``/readyz`` for the headline) from the daemon at
``--url`` or at ``http_host:http_port`` from the settings. Nothing answering is
one line and exit code 3, like an unreachable database: it is the same kind of
trouble for whoever runs the command.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from propagator.core.redact import redact, redact_data
from propagator.errors import ConfigurationError, ExitCode, TransientError
from propagator.settings import Settings, load_settings

__all__ = ["default_url", "fetch_status", "render_status", "run"]

_WILDCARD_HOSTS: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


class DaemonUnreachableError(TransientError):
    """No propagator daemon answered at the URL."""


def default_url(settings: Settings) -> str:
    """Where a local daemon listens; a wildcard bind address is reached on loopback."""
    host = _WILDCARD_HOSTS.get(settings.http_host, settings.http_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def _endpoint(base: str, path: str) -> str:
    parts = urlsplit(base if "://" in base else f"http://{base}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"--url must be an http:// address, not {base!r}")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/status"):
        prefix = prefix.removesuffix("/status")
    return urlunsplit((parts.scheme, parts.netloc, prefix + path, "", ""))


def _get(url: str, timeout: float, token: str | None) -> tuple[int, Any]:
    """GET a JSON endpoint; an HTTP error status is returned, not raised."""
    headers = {"Accept": "application/json", "User-Agent": "propagator-status"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked above
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DaemonUnreachableError(f"no propagator daemon answers at {url}: {reason}") from None
    try:
        return status, json.loads(body)
    except ValueError:
        raise DaemonUnreachableError(
            f"{url} answered HTTP {status} but not with JSON: is a propagator daemon there?"
        ) from None


def fetch_status(base_url: str, *, timeout: float = 5.0, token: str | None = None) -> Any:
    """The daemon's ``/status`` document."""
    url = _endpoint(base_url, "/status")
    status, payload = _get(url, timeout, token)
    if status in (401, 403):
        raise ConfigurationError(
            f"{url} refused the request (HTTP {status}): check api_token or read_token"
        )
    if status != 200:
        raise DaemonUnreachableError(f"{url} answered HTTP {status}: {payload}")
    return payload


def _readiness(base_url: str, timeout: float, token: str | None) -> tuple[bool, list[str]] | None:
    try:
        status, payload = _get(_endpoint(base_url, "/readyz"), timeout, token)
    except TransientError:
        return None
    if not isinstance(payload, dict):
        return None
    return status == 200, [str(reason) for reason in payload.get("reasons", [])]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"
    return str(value)


def _lines(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(value, dict):
        simple = [(k, v) for k, v in value.items() if not isinstance(v, dict | list)]
        nested = [(k, v) for k, v in value.items() if isinstance(v, dict | list)]
        width = max((len(str(k)) for k, _ in simple), default=0)
        for key, item in simple:
            out.append(f"{pad}{str(key).replace('_', ' ') + ':':<{width + 1}} {_scalar(item)}")
        for key, item in nested:
            if not item:
                out.append(f"{pad}{str(key).replace('_', ' ')}: (none)")
                continue
            out.append(f"{pad}{str(key).replace('_', ' ')}:")
            out.extend(_lines(item, indent + 1))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                sub = _lines(item, indent + 1)
                out.append(f"{pad}- {sub[0].strip()}" if sub else f"{pad}-")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_scalar(item)}")
    else:
        out.append(f"{pad}{_scalar(value)}")
    return out


def render_status(url: str, payload: Any, readiness: tuple[bool, list[str]] | None) -> str:
    """A readable summary: a headline with readiness, then every field of ``/status``.

    With one mapping its fields are shown once, at the top; with several, the
    process's fields first, then each mapping under its name.
    """
    lines = [f"propagator daemon at {url}"]
    if readiness is not None:
        ready, reasons = readiness
        headline = "ready" if ready else "NOT READY"
        lines.append(f"  {headline}" + (f": {'; '.join(reasons)}" if reasons else ""))
    mappings = payload.get("mappings") if isinstance(payload, dict) else None
    if not isinstance(mappings, list) or not mappings:
        lines.extend(_lines(payload, 1))
    elif len(mappings) == 1:
        lines.extend(_lines({k: v for k, v in payload.items() if k != "mappings"}, 1))
    else:
        per_mapping = set(mappings[0]) - _AGGREGATED
        shared = {k: v for k, v in payload.items() if k not in per_mapping and k != "mappings"}
        lines.extend(_lines(shared, 1))
        for mapping in mappings:
            lines.append(f"  mapping {mapping.get('name', '?')}:")
            lines.extend(_lines({k: v for k, v in mapping.items() if k != "name"}, 2))
    return redact("\n".join(lines))


# Shown at the top with several mappings: over all of them (role: common or "mixed").
_AGGREGATED: Final = {"role", "catchup_done", "pending_keys", "in_flight_keys"}


def select_mappings(payload: Any, names: list[str]) -> Any:
    """``/status`` limited to the named mappings; an unknown name is a one-line error."""
    if not names or not isinstance(payload, dict):
        return payload
    served = [m for m in payload.get("mappings", []) if isinstance(m, dict)]
    known = [str(m.get("name")) for m in served]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigurationError(
            f"the daemon serves no mapping {unknown[0]!r}; it serves: {', '.join(known)}"
        )
    chosen = [m for m in served if m.get("name") in names]
    flat = {k: v for k, v in chosen[0].items() if k != "name"} if len(chosen) == 1 else {}
    return {**payload, **flat, "mappings": chosen}


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.timeout <= 0:
        raise ConfigurationError("--timeout must be a positive number of seconds")
    base = args.url or default_url(settings)
    secret = settings.read_token or settings.api_token
    token = secret.get_secret_value() if secret else None
    payload = select_mappings(fetch_status(base, timeout=args.timeout, token=token), args.mappings)
    if args.format == "json":
        print(json.dumps(redact_data(payload), indent=2))
        return ExitCode.OK
    readiness = _readiness(base, args.timeout, token)
    print(render_status(_endpoint(base, ""), payload, readiness))
    return ExitCode.OK
