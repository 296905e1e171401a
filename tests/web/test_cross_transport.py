"""One room, three ways in: WebSocket, native TCP and the papayaChat dialect see the same
messages in the same order."""

from __future__ import annotations

import trio
import trio.testing

from tests.memory_world import KEY, LineClient
from tests.web.ws_world import open_web_world


async def read_papaya_lines(client: LineClient, count: int) -> list[str]:
    """The next `count` live papayaChat messages (`user: text\\0` each)."""
    data = b""
    while data.count(b"\0") < count:
        chunk = await client.stream.receive_some(4096)
        assert chunk, "papayaChat stream ended early"
        data += chunk
    return [line.decode() for line in data.split(b"\0")[:count]]


async def test_websocket_tcp_and_papaya_clients_see_the_same_messages_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_web_world() as world:
        web, _ = await world.join_ws("webby")
        native, _ = await world.join_tcp("nat")
        papaya = LineClient(await world.tcp.connect())
        await papaya.send_raw(KEY.encode())
        await trio.testing.wait_all_tasks_blocked()
        assert len(world.room.sessions) == 3

        expected = []
        for round_ in range(3):
            await web.chat(f"from the browser {round_}", f"w{round_}")
            expected.append(("webby", f"from the browser {round_}"))
            await native.chat(f"from the terminal {round_}", f"n{round_}")
            expected.append(("nat", f"from the terminal {round_}"))
            await papaya.send_raw(f"old: from papayaChat {round_}\n".encode())
            expected.append(("old", f"from papayaChat {round_}"))
            await trio.testing.wait_all_tasks_blocked()  # papayaChat has no acks
            assert world.room.log.head == len(expected)

        count = len(expected)
        for client in (web, native):
            got = await client.messages(count)
            assert [(m["user"], m["text"]) for m in got] == expected
            assert [m["seq"] for m in got] == list(range(1, count + 1))
        lines = await read_papaya_lines(papaya, count)
        assert lines == [f"{user}: {text}" for user, text in expected]
