"""A propagator webhook receiver, standard library only (see docs/webhooks.md).

    WEBHOOK_SECRET=... python webhook_receiver.py [PORT]

It listens on 127.0.0.1 (PORT, default 8080; 0 picks a free one) and prints the port
it got. Each request is checked before anything else is done with it: the
Propagator-Signature must be an HMAC-SHA256 by the shared secret over
"<t>.<raw body>", made less than five minutes ago. Changes already applied are
skipped, because a request may come again (a retry after a lost answer, a replay).
Anything but a 2xx answer makes propagator send the same changes again later.

propagator posts to https:// URLs only (plain http just to loopback): put this
behind a reverse proxy that terminates TLS, or adapt it to your web framework.
Applied ids live in memory here; a real receiver stores them with its data, in the
same transaction that applies the changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 300  # refuse signatures made longer ago (or further ahead) than this
MAX_BODY_BYTES = 16 * 1024 * 1024  # larger: 413, and propagator halves its batches


def verify(secret: bytes, header: str | None, body: bytes, now: float) -> bool:
    """Whether ``header`` (Propagator-Signature) signs ``body`` with ``secret``, recently."""
    if not header:
        return False
    fields: dict[str, str] = {}
    for part in header.split(","):  # t=<unix seconds>,v1=<hex>; ignore what you do not know
        name, _, value = part.strip().partition("=")
        fields[name] = value
    timestamp, signature = fields.get("t", ""), fields.get("v1", "")
    if not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False  # stale (or from the future): maybe a captured request played again
    message = timestamp.encode() + b"." + body  # the raw bytes, exactly as received
    expected = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


class Applied:
    """The highest change id applied per mapping: ids only grow, so lower ones are repeats."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.highest: dict[str, int] = {}

    def take(self, payload: dict[str, Any]) -> tuple[int, int]:
        """Apply the changes not applied before; how many were new and how many repeats."""
        new = repeated = 0
        with self.lock:  # one request at a time, in the order they arrive
            for change in payload["changes"]:
                if change["id"] <= self.highest.get(change["mapping"], 0):
                    repeated += 1  # sent before: a retry or a replay
                    continue
                apply_change(change)
                self.highest[change["mapping"]] = change["id"]
                new += 1
        return new, repeated


def apply_change(change: dict[str, Any]) -> None:
    """What the receiver is for; here, one line per change."""
    print(
        f"{change['id']} {change['mapping']} {change['key_label']} {change['field']}: "
        f"{change['old']} -> {change['new']} ({change['source']})",
        flush=True,
    )


def note_gap(gap: dict[str, Any]) -> None:
    """History was pruned before it reached us: what we derive from it needs a resync."""
    print(
        f"history ids {gap['after_id'] + 1} to {gap['through_id']} were pruned "
        "before they were received: resynchronise from the sandbox",
        flush=True,
    )


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], secret: bytes) -> None:
        super().__init__(address, Handler)
        self.secret = secret
        self.applied = Applied()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep the connection: propagator reuses it
    server: Receiver

    def do_POST(self) -> None:
        status, document = self.receive()
        self.answer(status, document)

    def receive(self) -> tuple[int, dict[str, Any]]:
        """Verify first, parse second, apply last; the status and what to answer."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return 411, {"error": "Content-Length required"}
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body stays unread
            return 413, {"error": "too large"}
        body = self.rfile.read(length)
        signature = self.headers.get("Propagator-Signature")
        if not verify(self.server.secret, signature, body, time.time()):
            return 401, {"error": "bad or stale signature"}
        try:  # only now is the body trusted enough to parse; Decimal keeps 510.00 exact
            payload = json.loads(body, parse_float=Decimal)
        except ValueError:
            return 400, {"error": "not JSON"}
        if payload.get("version") != 1:
            return 422, {"error": "unknown payload version"}  # kept, and sent again later
        if payload["gap"] is not None:
            note_gap(payload["gap"])
        new, repeated = self.server.applied.take(payload)
        return 200, {"new": new, "repeated": repeated}

    def answer(self, status: int, document: dict[str, Any]) -> None:
        reply = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        return  # apply_change() prints what matters


def main() -> None:
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if len(secret) < 16:
        sys.exit("set WEBHOOK_SECRET to the endpoint's secret (16 characters or more)")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = Receiver(("127.0.0.1", port), secret.encode())
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
