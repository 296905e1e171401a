"""The whole server over in-memory streams, under trio's autojump clock."""

from __future__ import annotations

import trio
import trio.testing

from papaya_trio.storage import MemoryStorage
from tests.memory_world import KEY, open_world


async def test_two_clients_chat(autojump_clock: trio.testing.MockClock) -> None:
    async with open_world() as world:
        alice, welcome = await world.join("alice")
        assert welcome["head"] == 0
        bob, _ = await world.join("bob")
        seq = await alice.chat("hello bob", "a1")
        assert seq == 1
        [got] = await bob.messages(1)
        assert (got["seq"], got["user"], got["text"]) == (1, "alice", "hello bob")
        assert got["time"].endswith("Z")
        [own] = await alice.messages(1)  # the sender gets its own message back
        assert own["seq"] == 1
