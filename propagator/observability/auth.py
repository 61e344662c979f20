"""Tokens on HTTP routes: the action token and the read token, compared in constant time.

Actions (``POST /reconcile``) take only ``Authorization: Bearer <token>``: a
browser never adds that header by itself, so a foreign page cannot make one.
Reads under read protection take the token as a bearer token too, or as the
password of HTTP Basic authentication (any user name), so that a person opening
the status page gets the browser's own prompt and the page's refreshes carry
the credentials. Tokens are compared as SHA-256 digests with
``hmac.compare_digest``, every configured token each time: neither the content
nor the length of a token leaks through timing. No token is ever logged or
echoed in an answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from propagator.observability.wire import Request, Response

__all__ = ["Handler", "bearer_protected", "read_protected", "token_matches"]

Handler = Callable[[Request], Awaitable[Response]]

_READ_CHALLENGES: Final = (
    ("WWW-Authenticate", 'Bearer realm="propagator"'),
    ("WWW-Authenticate", 'Basic realm="propagator", charset="UTF-8"'),
)


def token_matches(given: str | None, expected: Sequence[str]) -> bool:
    """Whether ``given`` equals one of ``expected``, in time independent of both."""
    digest = hashlib.sha256((given or "").encode()).digest()
    matched = False
    for token in expected:
        wanted = hashlib.sha256(token.encode()).digest()
        matched |= hmac.compare_digest(digest, wanted) and bool(given)
    return matched


def bearer_protected(token: Callable[[], str | None], handler: Handler) -> Handler:
    """Wrap ``handler`` so it runs only with ``Authorization: Bearer <token>``.

    ``token`` is read per request (settings may change); when it returns None the
    route is refused outright: an unconfigured token never means an open door.
    """

    async def guarded(request: Request) -> Response:
        expected = token()
        if not expected:
            return Response.error(403, "this endpoint needs api_token to be configured")
        if not token_matches(request.bearer_token(), [expected]):
            return Response.error(
                401, "missing or wrong bearer token", headers=(("WWW-Authenticate", "Bearer"),)
            )
        return await handler(request)

    return guarded


def read_protected(tokens: Callable[[], Sequence[str]], handler: Handler) -> Handler:
    """Wrap a read route: it runs only with one of ``tokens``, as Bearer or Basic password.

    No configured token refuses the route (403), as for actions.
    """

    async def guarded(request: Request) -> Response:
        expected = [token for token in tokens() if token]
        if not expected:
            return Response.error(403, "read protection is on but no token is configured")
        given = request.bearer_token() or request.basic_password()
        if not token_matches(given, expected):
            return Response.error(
                401,
                "this endpoint needs the read token (Bearer, or as the Basic password)",
                headers=_READ_CHALLENGES,
            )
        return await handler(request)

    return guarded
