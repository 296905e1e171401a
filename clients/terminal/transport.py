"""Transports: the same protocol objects over TCP (one JSON line each) or WebSocket (one frame).

A session sees `MessageConnection`, never bytes. Each backend translates its transport
exceptions into `TransportError` in exactly one place (`_map_exceptions`), and one task may own
each half of a connection: `send_object` and `receive_object` may run concurrently, but two
tasks sending at once is a bug that trio's conflict detection reports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Protocol, TypeAlias

import trio
import trio_websocket

from clients.terminal.protocol import (
    MAX_RECEIVE_LINE_BYTES,
    LineBuffer,
    encode,
    parse_json,
)

#: How many bytes a TCP receive asks for at once.
RECEIVE_CHUNK_BYTES = 65536

#: How many received WebSocket frames trio-websocket may queue before it stops reading.
WS_QUEUE_FRAMES = 64


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
    """The native dialect over a TCP stream: one line of JSON per object."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._lines = LineBuffer(MAX_RECEIVE_LINE_BYTES)
        self._eof = False

    def __repr__(self) -> str:
        return f"<TcpConnection {self._lines!r}{' eof' if self._eof else ''}>"

    async def send_object(self, obj: dict[str, object]) -> None:
        """Send one object as a line."""
        line = encode(obj)
        with _map_exceptions():
            await self._stream.send_all(line)

    async def receive_object(self) -> dict[str, object] | None:
        """Return the next object, None at end of stream (a partial last line is dropped)."""
        while (line := self._lines.next_line()) is None:
            if self._eof:
                return None
            with _map_exceptions():
                data = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
            if not data:
                self._eof = True
            self._lines.receive_data(data)
        return parse_json(line)


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
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"websocket handshake rejected with HTTP status {exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return f"websocket closed: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_tcp_connection(host: str, port: int) -> AsyncIterator[MessageConnection]:
    """Connect over TCP; the stream is closed when the block exits."""
    with _map_exceptions():
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        yield TcpConnection(stream)


@asynccontextmanager
async def open_websocket_connection(url: str) -> AsyncIterator[MessageConnection]:
    """Connect over WebSocket (ws:// or wss://); the socket is closed when the block exits."""
    # The connection's own methods map their errors already; this catches the handshake's.
    with _map_exceptions():
        async with trio_websocket.open_websocket_url(
            url,
            message_queue_size=WS_QUEUE_FRAMES,
            max_message_size=MAX_RECEIVE_LINE_BYTES,
        ) as ws:
            yield WebSocketConnection(ws)


def connector_for(host: str, port: int, ws_url: str | None) -> tuple[str, Connector]:
    """Return a name for the status line and a factory that opens a connection."""
    if ws_url is not None:
        return ws_url, lambda: open_websocket_connection(ws_url)
    return f"{host}:{port}", lambda: open_tcp_connection(host, port)
