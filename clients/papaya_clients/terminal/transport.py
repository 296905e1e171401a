"""Transports: the same protocol objects over TCP (one JSON line each) or WebSocket (one frame).

A session sees `MessageConnection`, never bytes. Each backend translates its transport
exceptions into `TransportError` in exactly one place (`_map_exceptions`), and one task may own
each half of a connection: `send_object` and `receive_object` may run concurrently, but two
tasks sending at once is a bug that trio's conflict detection reports.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Protocol, TypeAlias
from urllib.parse import urlsplit

import trio
import trio_websocket

from papaya_clients.terminal.config import ConfigError
from papaya_trio.protocol.client import (
    MAX_RECEIVE_LINE_BYTES,
    ClientDecoder,
    encode,
    parse_json,
)

#: How many bytes a TCP receive asks for at once.
RECEIVE_CHUNK_BYTES = 65536

#: How many received WebSocket frames trio-websocket may queue before it stops reading.
WS_QUEUE_FRAMES = 64

#: Seconds the WebSocket close handshake may take before the socket is closed anyway.
WS_CLOSE_TIMEOUT = 5.0


class TransportError(Exception):
    """The connection could not be opened, or broke; reconnecting may help."""


class MessageConnection(Protocol):
    """One connection to the server that carries protocol objects."""

    async def send_object(self, obj: dict[str, object]) -> None:
        """Send one object; raise `TransportError` if the connection is broken."""

    async def receive_object(self) -> dict[str, object] | None:
        """Return the next object, or None once the server has closed the connection."""


#: Opens one connection, closed again when its block exits.
Connector: TypeAlias = Callable[[], AbstractAsyncContextManager[MessageConnection]]


class TcpConnection:
    """The native dialect over a TCP stream: one line of JSON per object.

    The first object (the hello) is followed by a blank line, which the native dialect skips:
    an HTTP server, which waits for a blank line to end the request head, then answers at once
    (400), and the decoder reports `WrongService` instead of a 10 s wait for a welcome.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = ClientDecoder(MAX_RECEIVE_LINE_BYTES)
        self._eof = False
        self._first = True

    def __repr__(self) -> str:
        return f"<TcpConnection {self._decoder!r}{' eof' if self._eof else ''}>"

    async def send_object(self, obj: dict[str, object]) -> None:
        """Send one object as a line."""
        line = encode(obj)
        if self._first:
            self._first = False
            line += b"\n"
        with _map_exceptions():
            await self._stream.send_all(line)

    async def receive_object(self) -> dict[str, object] | None:
        """Return the next object, None at end of stream (a partial last line is dropped)."""
        while (obj := self._decoder.next_object()) is None:
            if self._eof:
                return None
            with _map_exceptions():
                data = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
            if not data:
                self._eof = True
            self._decoder.receive_data(data)
        return obj


class WebSocketConnection:
    """The same objects over WebSocket: one object per text frame, no newline."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    def __repr__(self) -> str:
        return f"<WebSocketConnection {'closed' if self._ws.closed else 'open'}>"

    async def send_object(self, obj: dict[str, object]) -> None:
        """Send one object as a text frame."""
        text = encode(obj)[:-1].decode()
        with _map_exceptions():
            await self._ws.send_message(text)

    async def receive_object(self) -> dict[str, object] | None:
        """Return the next object, None once the server closed the WebSocket."""
        try:
            frame = await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            return None
        return parse_json(frame)


@contextmanager
def _map_exceptions() -> Iterator[None]:
    """Translate every transport failure into `TransportError`."""
    try:
        yield
    except (
        OSError,
        trio.BrokenResourceError,
        trio_websocket.HandshakeError,
        trio_websocket.ConnectionClosed,
    ) as exc:
        raise TransportError(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    # A failed TLS handshake surfaces as a BrokenResourceError caused by an ssl.SSLError.
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not accepted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {(cause.reason or str(cause)).lower().replace('_', ' ')}"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"websocket handshake rejected with HTTP status {exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return f"websocket closed: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or newer, the server's certificate and host name verified against `ca_file`'s
    certificates, or the system's when None. Raises ConfigError if `ca_file` is unusable."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot use CA file {ca_file}: {reason}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@asynccontextmanager
async def _open_stream(
    host: str, port: int, tls: ssl.SSLContext | None
) -> AsyncIterator[trio.SocketStream | trio.SSLStream[trio.SocketStream]]:
    """A TCP stream, with TLS if given a context; closed when the block exits.

    The TLS handshake runs here, so that a certificate that is not accepted is reported as a
    failed connection (trio-websocket's own client would wait for its handshake forever).
    `https_compatible`: every message is framed (a line, a WebSocket frame), so a close without
    TLS's close_notify can only cut an unfinished one.
    """
    with _map_exceptions():
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        if tls is None:
            yield stream
            return
        secure = trio.SSLStream(stream, tls, server_hostname=host, https_compatible=True)
        with _map_exceptions():
            await secure.do_handshake()
        yield secure


@asynccontextmanager
async def open_tcp_connection(
    host: str, port: int, tls: ssl.SSLContext | None = None
) -> AsyncIterator[MessageConnection]:
    """Connect over TCP, with TLS if given a context; closed when the block exits."""
    async with _open_stream(host, port, tls) as stream:
        yield TcpConnection(stream)


@asynccontextmanager
async def open_websocket_connection(
    url: str, tls: ssl.SSLContext | None = None
) -> AsyncIterator[MessageConnection]:
    """Connect over WebSocket (ws://, or wss:// verified with `tls`, by default against the
    system's CAs); the connection is closed when the block exits."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    if secure and tls is None:
        tls = client_tls_context(None)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with (
        _open_stream(parts.hostname or "", port, tls if secure else None) as stream,
        trio.open_nursery() as nursery,
    ):
        # The connection's own methods map their errors already; this is the handshake's.
        with _map_exceptions():
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                parts.netloc.rpartition("@")[2],
                resource,
                message_queue_size=WS_QUEUE_FRAMES,
                max_message_size=MAX_RECEIVE_LINE_BYTES,
            )
        try:
            yield WebSocketConnection(ws)
        finally:
            with trio.move_on_after(WS_CLOSE_TIMEOUT):
                await ws.aclose()
            nursery.cancel_scope.cancel()  # the reader task


def connector_for(
    host: str, port: int, ws_url: str | None, tls: ssl.SSLContext | None = None
) -> tuple[str, Connector]:
    """Return a name for the status line and a factory that opens a connection."""
    if ws_url is not None:
        return ws_url, lambda: open_websocket_connection(ws_url, tls)
    name = f"{host}:{port}" + (" (TLS)" if tls is not None else "")
    return name, lambda: open_tcp_connection(host, port, tls)
