"""The HTTP port of a real `papaya-trio serve` process, over real loopback sockets."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from tests.real_server import ServerFactory


@asynccontextmanager
async def open_ws(port: int) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket whose socket is closed however the server ends it (trio-websocket's
    own client leaves it open when the server closes first)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            yield await wrap_client_stream(nursery, stream, f"127.0.0.1:{port}", "/ws")
            nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


def test_serve_prints_the_url_and_serves_the_page(trio_servers: ServerFactory) -> None:
    server = trio_servers.start()
    assert server.url == f"http://127.0.0.1:{server.http_port}/"
    assert f"listening http {server.url}" in server.log
    with urllib.request.urlopen(server.url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'<script src="app.js"' in reply.read()


async def test_websocket_chat_and_shutdown_with_1001(trio_servers: ServerFactory) -> None:
    server = trio_servers.start()
    assert server.http_port is not None
    async with open_ws(server.http_port) as ws:
        await ws.send_message(json.dumps({"type": "hello", "key": server.key, "user": "alice"}))
        assert json.loads(await ws.get_message())["type"] == "welcome"
        await ws.send_message(json.dumps({"type": "send", "text": "over a real socket"}))
        kinds = {json.loads(await ws.get_message())["type"] for _ in range(2)}
        assert kinds == {"message", "ack"}
        await trio.to_thread.run_sync(server.stop)
        error = json.loads(await ws.get_message())
        assert (error["code"], error["fatal"]) == ("shutdown", True)
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1001
        else:
            raise AssertionError("the server did not close")


async def test_oversize_frame_gets_its_1009_over_a_real_socket(
    trio_servers: ServerFactory,
) -> None:
    # The rest of a huge frame is still arriving when the server closes; it must drain it, or
    # the kernel resets the connection and the client never sees why.
    server = trio_servers.start("--ws-max-message-bytes", "16384")
    assert server.http_port is not None
    async with open_ws(server.http_port) as ws:
        await ws.send_message(json.dumps({"type": "hello", "key": server.key, "user": "alice"}))
        assert json.loads(await ws.get_message())["type"] == "welcome"
        text = "x" * 4_000_000
        await ws.send_message(json.dumps({"type": "send", "text": text}))
        try:
            await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1009
        else:
            raise AssertionError("the server did not close")
    assert "frame too long" in server.log
