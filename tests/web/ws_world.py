"""The server's world in memory with its HTTP port too: WebSocket and raw-HTTP test clients.

Like `tests.memory_world`, everything runs over `trio.testing` memory streams, so the tests run
under `autojump_clock` and timeouts and keepalive cost no real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from papaya_trio.chatlog import ChatLog
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.storage import MemoryStorage, Storage
from papaya_trio.transports.http import WebSettings
from papaya_trio.transports.static import StaticSite
from papaya_trio.transports.websocket import WebSocketSettings
from tests.memory_world import KEY, LineClient, MemoryListener, trio_clock_ms

HOST = "papaya.test"


class WsClient(LineClient):
    """The native-dialect test client, one JSON object per text frame."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.ws = ws

    async def send(self, **obj: Any) -> None:
        await self.ws.send_message(json.dumps(obj, ensure_ascii=False))  # as browsers do

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send_message(data)

    async def receive_object(self) -> dict[str, Any] | None:
        """The next object, or None once the server has closed."""
        try:
            frame = await self.ws.get_message()
        except ConnectionClosed:
            return None
        obj: dict[str, Any] = json.loads(frame)
        return obj

    @property
    def close_code(self) -> int | None:
        return self.ws.closed.code if self.ws.closed else None


class FreezableStream(trio.abc.Stream):
    """A client stream that can stop reading, to play a peer that died without a word."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.frozen = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        if self.frozen:
            await trio.sleep_forever()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class WebWorld:
    """A running in-memory server with a TCP and an HTTP listener."""

    server: ChatServer
    tcp: MemoryListener
    http: MemoryListener
    storage: Storage
    clients: trio.Nursery

    @property
    def room(self) -> Room:
        return self.server.room

    async def connect_tcp(self) -> LineClient:
        return LineClient(await self.tcp.connect())

    async def connect_ws(
        self, path: str = "/ws", headers: list[tuple[bytes, bytes]] | None = None
    ) -> WsClient:
        stream = FreezableStream(await self.http.connect())
        ws = await wrap_client_stream(self.clients, stream, HOST, path, extra_headers=headers)
        return WsClient(ws, stream)

    async def join_ws(self, user: str, **extra: Any) -> tuple[WsClient, dict[str, Any]]:
        client = await self.connect_ws()
        welcome = await client.hello(user, **extra)
        return client, welcome

    async def join_tcp(self, user: str, **extra: Any) -> tuple[LineClient, dict[str, Any]]:
        client = await self.connect_tcp()
        welcome = await client.hello(user, **extra)
        return client, welcome

    async def request(self, raw: bytes) -> HttpAnswer:
        """Send raw bytes to the HTTP port and read the answer up to the server's close."""
        stream = await self.http.connect()
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.aclose()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return HttpAnswer(int(status_line.split()[1]), headers, body)

    async def get(self, target: str, method: str = "GET", *extra: str) -> HttpAnswer:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", *extra, "", ""]
        return await self.request("\r\n".join(lines).encode())


def upgrade_request(path: str = "/ws", *extra: str) -> bytes:
    """A WebSocket upgrade request, by hand (for answers trio-websocket's client won't show)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *extra,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


@asynccontextmanager
async def open_web_world(
    storage: Storage | None = None,
    *,
    websocket: WebSocketSettings | None = None,
    site: StaticSite | None = None,
    max_connections: int = 64,
    **settings: Any,
) -> AsyncIterator[WebWorld]:
    """Run a server with a TCP and an HTTP memory listener for the `async with` block."""
    storage = storage if storage is not None else MemoryStorage()
    log, _ = await ChatLog.open(storage, clock_ms=trio_clock_ms)
    room = Room(log, KEY, RoomSettings(**settings))
    web = WebSettings(
        site if site is not None else StaticSite.browser_client(room.settings.max_message_bytes),
        websocket if websocket is not None else WebSocketSettings(),
    )
    server = ChatServer(room, max_connections=max_connections, web=web)
    tcp = MemoryListener(trio.testing.memory_stream_pair)
    http = MemoryListener(trio.testing.memory_stream_pair)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [tcp], [http])
        try:
            async with trio.open_nursery() as clients:
                yield WebWorld(server, tcp, http, storage, clients)
                clients.cancel_scope.cancel()
        finally:
            server.shutdown()
    await log.aclose()
