"""A peer that dies without closing, for real: run inside a fresh network namespace.

    unshare -n python -m tests.dead_peer --idle 1 --interval 1 --count 2

Brings the namespace's loopback up, serves a room with the real `ChatServer` on it, connects
a native member, then takes the loopback down: from then on no packet gets through either
way, as when a peer's host loses power, and only TCP keepalive can tell. Prints one JSON
line: how long after the link went down the server ended the member's session, and why.
Bounded by the keepalive bound plus `SLACK` seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import trio

from papaya_trio.chatlog import ChatLog
from papaya_trio.keepalive import TcpKeepalive
from papaya_trio.room import Room, RoomSettings
from papaya_trio.server import ChatServer
from papaya_trio.session import Session
from papaya_trio.storage import MemoryStorage
from sim.world import KEY, sim_clock_ms
from tests.memory_world import LineClient

SLACK = 30.0  # seconds beyond the keepalive bound before giving up


class WatchedSession(Session):
    """A session that says when it ended."""

    ended = trio.Event()
    reason = ""

    async def run(self) -> str:
        reason = await super().run()
        WatchedSession.reason = reason
        WatchedSession.ended.set()
        return reason


def set_loopback(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


async def reap_time(keepalive: TcpKeepalive) -> dict[str, object]:
    set_loopback("up")
    log, _ = await ChatLog.open(MemoryStorage(), clock_ms=sim_clock_ms)
    room = Room(log, KEY, RoomSettings(idle_timeout=0), session_class=WatchedSession)
    server = ChatServer(room, keepalive=keepalive)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(keepalive.bound + SLACK):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            client = LineClient(await trio.open_tcp_stream("127.0.0.1", port))
            await client.hello("alice")
            set_loopback("down")
            down_at = trio.current_time()
            await WatchedSession.ended.wait()
            reaped_after = trio.current_time() - down_at
            server.shutdown()
    return {"reaped_after": reaped_after, "reason": WatchedSession.reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--count", type=int, default=2)
    ns = parser.parse_args()
    result = trio.run(reap_time, TcpKeepalive(ns.idle, ns.interval, ns.count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
