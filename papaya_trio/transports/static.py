"""The browser client's files, served on the HTTP port from a fixed whitelist.

Theory of operation
-------------------
`StaticSite` is read once at start-up: a map from URL path to bytes and content type, built
from a fixed list of file names in `clients/papaya_clients/web/`. A request never becomes a
file-system path, so there is nothing to traverse; an unknown path is a 404. Responses are
built with h11 (the sans-I/O HTTP/1.1 library that wsproto already uses) and always end with
`Connection: close`: a page is four small files, and a connection that serves one request and
closes is a connection that cannot idle on the server.

This module does no I/O after `StaticSite.browser_client()` has read the files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from types import MappingProxyType

import h11

CLIENT_PACKAGE = "papaya_clients.web"

# path -> file name; the only files the server will ever send.
ROUTES: Mapping[str, str] = MappingProxyType(
    {
        "/": "index.html",
        "/index.html": "index.html",
        "/app.js": "app.js",
        "/style.css": "style.css",
        "/favicon.svg": "favicon.svg",
    }
)

CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".json": "application/json",
    }
)

# The page needs nothing but its own files and its own WebSocket; a message that somehow got
# rendered as HTML still could not run a script or load anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("Connection", "close"),
)


class StaticSiteError(Exception):
    """The browser client's files cannot be read; the message says which."""


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One servable file."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer: status, content type and body (the body is dropped for HEAD)."""

    status: int
    content_type: str
    body: bytes
    extra_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StaticSite:
    """The files the HTTP port serves, by URL path. The default site is empty (all 404)."""

    files: Mapping[str, StaticFile] = field(default_factory=dict)

    @classmethod
    def browser_client(cls, max_message_bytes: int = 4096) -> StaticSite:
        """Read the browser client from the installed `papaya_clients.web` package.

        `/server.json` tells the page the limits it must respect before sending (a text frame
        past the WebSocket limit would close the connection).
        """
        try:
            folder = resources.files(CLIENT_PACKAGE)
            by_name = {name: folder.joinpath(name).read_bytes() for name in set(ROUTES.values())}
        except (ModuleNotFoundError, OSError) as exc:
            message = f"cannot read the browser client ({CLIENT_PACKAGE}): {exc}"
            raise StaticSiteError(message) from None
        files = {
            path: StaticFile(by_name[name], _content_type(name)) for path, name in ROUTES.items()
        }
        limits = json.dumps({"max_message_bytes": max_message_bytes}).encode()
        files["/server.json"] = StaticFile(limits, CONTENT_TYPES[".json"])
        return cls(MappingProxyType(files))

    def respond(self, method: bytes, target: bytes, *, full: bool = False) -> Response:
        """The answer to one request (sans-I/O)."""
        if method not in (b"GET", b"HEAD"):
            return _plain(405, "only GET and HEAD are allowed here", ("Allow", "GET, HEAD"))
        if full:
            return _plain(503, "the server is full; try again later", ("Retry-After", "5"))
        found = self.files.get(request_path(target))
        if found is None:
            return _plain(404, "not found")
        return Response(200, found.content_type, found.body)


def request_path(target: bytes) -> str:
    """The path of a request target, without its query or fragment."""
    return target.split(b"?", 1)[0].split(b"#", 1)[0].decode("ascii", "replace")


def _content_type(name: str) -> str:
    return CONTENT_TYPES[name[name.rindex(".") :]]


def _plain(status: int, text: str, *extra: tuple[str, str]) -> Response:
    return Response(status, "text/plain; charset=utf-8", text.encode() + b"\n", extra)


def render(conn: h11.Connection, response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of `response` on `conn` (whose request has been read)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *COMMON_HEADERS,
        *response.extra_headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    head = h11.Response(status_code=response.status, headers=headers, reason=reason)
    data = conn.send(head) or b""
    if not head_only:
        data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    return data
