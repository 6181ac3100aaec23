"""Who may talk to ``loracle al serve``: loopback by default, a token for anything else, same-origin JSON writes.

- :func:`check_bind` refuses a non-loopback address without a token, before anything listens.
- :class:`Guard` (ASGI middleware) checks every request: the token (query parameter ``token``, header
  ``X-Loracle-Token`` or ``Authorization: Bearer``) when one is set; without a token, that the ``Host`` header names
  the loopback address (so a web page cannot reach the server through a DNS name that points at 127.0.0.1); and for
  requests that change something, that they are JSON (a cross-site HTML form cannot send JSON) and, when the
  browser says where they come from (``Origin``), that they come from the page itself. Every response carries a
  content security policy that allows only this server's own scripts, styles and images.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from loracle.errors import LoracleError

TOKEN_PARAM = "token"
TOKEN_HEADER = "x-loracle-token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: the largest request body accepted (answers are a few bytes)
MAX_BODY = 64 * 1024

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token may be in the address
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) stays on this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises:
        LoracleError: for a non-loopback ``host`` without ``token``, or an empty token.
    """
    if token is not None and not token.strip():
        raise LoracleError("--token is empty; give a long random string, e.g. "
                           "`python -c \"import secrets; print(secrets.token_urlsafe())\"`")
    if not is_loopback(host) and not token:
        raise LoracleError(
            f"--host {host} would let other machines reach the labelling server (and the run's data) without a "
            "password; add --token T (e.g. T from `python -c \"import secrets; print(secrets.token_urlsafe())\"`) "
            "and open the printed address with ?token=T, or keep the default --host 127.0.0.1")


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware: token, host and same-origin checks, and security headers on every response.

    Args:
        app: the application it wraps.
        token: the token every request must bring, or None.
        allowed_hosts: host names a request's ``Host`` header may name; None allows any (a token is set).
    """

    def __init__(self, app: Any, token: str | None = None, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._problem(scope, headers)
        if problem is not None:
            status, message = problem
            await self._refuse(send, status, message)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _problem(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host).lower() not in self.allowed_hosts:
            return 400, (f"host {host!r} is not this server's address; open http://127.0.0.1:PORT/ "
                         "(a server without --token answers only on the loopback address)")
        if self.token is not None:
            from urllib.parse import parse_qs

            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get(TOKEN_PARAM) or [None])[0] or headers.get(TOKEN_HEADER)
            authorization = headers.get("authorization", "")
            if not given and authorization.lower().startswith("bearer "):
                given = authorization[7:].strip()
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, ("this server needs its token: open the address `loracle al serve` printed "
                             "(it ends in ?token=...), or send the X-Loracle-Token header")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return 403, f"a request from {origin!r} may not change this run; use the page this server serves"
            if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                return 415, "send the request body as JSON (Content-Type: application/json)"
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                return 413, f"the request body is larger than {MAX_BODY} bytes"
        return None

    @staticmethod
    async def _refuse(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *SECURITY_HEADERS]})
        await send({"type": "http.response.body", "body": body})
