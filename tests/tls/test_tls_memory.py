"""TLS handshakes inside the server's deadlines, over memory streams under the autojump clock:
a client that never finishes its handshake holds nothing past the deadline, and blocks nobody
meanwhile (the handshake runs in the connection's task, not in the accept loop)."""

from __future__ import annotations

import trio
import trio.testing

from papaya_trio.chatlog import ChatLog
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.storage import MemoryStorage
from papaya_trio.tls import server_context
from papaya_trio.transports.http import WebSettings
from papaya_trio.transports.websocket import WebSocketSettings
from tests.memory_world import KEY, LineClient, MemoryListener, trio_clock_ms
from tests.tls.conftest import Pki

AUTH_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 3.0


async def test_stalled_handshakes_end_at_the_deadlines_and_block_nobody(
    autojump_clock: trio.testing.MockClock, pki: Pki
) -> None:
    context = server_context(pki.cert, pki.key)
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=trio_clock_ms)
    room = Room(log, KEY, RoomSettings(auth_timeout=AUTH_TIMEOUT))
    web = WebSettings(websocket=WebSocketSettings(handshake_timeout=HANDSHAKE_TIMEOUT))
    server = ChatServer(room, web=web)
    tcp = MemoryListener(trio.testing.memory_stream_pair)
    http = MemoryListener(trio.testing.memory_stream_pair)
    secured = [
        trio.SSLListener(listener, context, https_compatible=True) for listener in (tcp, http)
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [secured[0]], [secured[1]])
        start = trio.current_time()
        stalled_tcp = await tcp.connect()  # not even a ClientHello
        stalled_http = await http.connect()

        member = trio.SSLStream(
            await tcp.connect(), pki.client_context(), server_hostname="127.0.0.1"
        )
        client = LineClient(member)
        await client.send(type="hello", key=KEY, user="alice")
        await client.expect("welcome")
        assert trio.current_time() == start  # served while the others stall

        assert await stalled_http.receive_some(100) == b""
        assert trio.current_time() - start == HANDSHAKE_TIMEOUT
        assert await stalled_tcp.receive_some(100) == b""
        assert trio.current_time() - start == AUTH_TIMEOUT
        server.shutdown()
    await log.aclose()
