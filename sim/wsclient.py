"""Simulated WebSocket clients: the native dialect, one JSON object per text frame.

A `WsClient` is a `NativeClient` (same hello, sends, resends, checks and actors) that reaches
the server's HTTP port and upgrades with trio-websocket's client over the simulated link, so
the real HTTP dispatch, trio-websocket server and `WebSocketPeer` run underneath. What differs:

- frames instead of lines; the close code of every close frame is checked: 1001 after the
  server said it is shutting down, 1008 after "lagging", 1009 only for oversize frames;
- a client told the server is closing sometimes pings into the closing handshake;
- leave styles: a clean close handshake, a reset, vanishing (the link closes without a close
  frame) and going silent (the client stops reading and answering pings with the link still
  up: the server's keepalive must drop it within `ping_interval + ping_timeout`);
- `WsGarbageClient` sends text frames that are not valid requests, binary frames and
  oversize frames (past the frame limit in characters, which trio-websocket refuses itself,
  or only in bytes, which `WebSocketPeer` refuses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream
from wsproto.utilities import LocalProtocolError

from papaya_trio.transports.websocket import (
    ABNORMAL,
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    WEBSOCKET_PATH,
)
from sim.actors import Connection, GarbageClient, NativeClient, wait_replies
from sim.invariants import REPLIES, SLOW_BOUND
from sim.network import HTTP_PORT, Link
from sim.world import KEY, WS_PING_INTERVAL, WS_PING_TIMEOUT

HOST = "papaya.sim"
HANDSHAKE_WAIT = 2.0  # simulated seconds a client waits for the opening handshake
CLOSE_WAIT = 1.0  # simulated seconds a leaving client waits for the closing handshake
PING_WAIT = 0.5  # simulated seconds a client waits for the pong to a ping
DROP_SLACK = 1.0  # simulated seconds past the keepalive bound for the server to drop a client
WS_LEAVE_STYLES = ("close", "reset", "vanish", "silent")
# What the close frame must say after the server's last error frame said why.
CLOSE_AFTER = {"shutdown": GOING_AWAY, "lagging": POLICY_VIOLATION}


@dataclass(slots=True)
class WsConnection(Connection):
    """One WebSocket connection of a client."""

    ws: WebSocketConnection | None = None
    close_code: int | None = None
    silent: bool = False  # the client stopped reading and answering pings
    told_too_long: bool = False  # an error frame said the last frame was too long
    pinged: bool = False  # pinged after the server said why it closes


class WsClient(NativeClient):
    """A native-dialect client over WebSocket (as the browser client talks)."""

    leave_styles = WS_LEAVE_STYLES
    oversize_expected = False
    # No rushes: trio-websocket's client answers a ping under its send lock, so while a burst
    # waits on a server that reads slowly (the rate limit), it stops reading too, and with the
    # server's outbox full behind the unread bytes both sides wait until the keepalive ends
    # the connection (slow-consumer seed 219). A browser buffers its sends and keeps reading.
    rushes = False

    async def connect(self, since: int | None, nursery: trio.Nursery) -> Connection | None:
        """Connect to the HTTP port, upgrade, and say hello; None if that failed.
        trio-websocket's reader task runs in `nursery`."""
        try:
            link = await self.world.network.connect(self.user, HTTP_PORT)
        except OSError:
            return None
        ws: WebSocketConnection | None = None
        with trio.move_on_after(HANDSHAKE_WAIT):
            ws = await nursery.start(self._websocket, link)
        if ws is None:  # reset, closed or stalled during the handshake
            self.world.trace.record("ws_handshake_failed", who=self.user, link=link.number)
            link.client.close_now()
            return None
        conn = WsConnection(link, self.view(link, since), None, self.epoch, ws=ws)
        return await self.hello(conn, since)

    async def _websocket(
        self, link: Link, *, task_status: trio.TaskStatus[WebSocketConnection]
    ) -> None:
        """Run trio-websocket's client (its reader task) on `link`; hand over the open
        connection."""
        stream: Any = link.client  # annotated as a socket stream; any trio Stream works
        try:
            async with trio.open_nursery() as reader:
                ws = await wrap_client_stream(reader, stream, HOST, WEBSOCKET_PATH)
                task_status.started(ws)
        except* LocalProtocolError:
            # trio-websocket's reader answers a ping even after our own close frame, which
            # wsproto refuses (the server guards against the same in `serve_websocket`).
            self.world.trace.record("ws_late_pong", who=self.user, link=link.number)

    def _ws(self) -> WebSocketConnection:
        assert isinstance(self.conn, WsConnection) and self.conn.ws is not None
        return self.conn.ws

    async def send_frame(self, frame: str | bytes) -> bool:
        """Send one frame (text for str, binary for bytes); False if the connection is gone."""
        try:
            await self._ws().send_message(frame)
        except ConnectionClosed:
            return False
        return True

    async def send_obj(self, obj: dict[str, object]) -> bool:
        """Send one JSON object in a text frame."""
        return await self.send_frame(json.dumps(obj, ensure_ascii=False))

    async def read(self, conn: Connection) -> None:
        """Read and check every frame until the close (or the loss of the link)."""
        assert isinstance(conn, WsConnection) and conn.ws is not None
        try:
            while True:
                frame = await conn.ws.get_message()
                if isinstance(frame, bytes):
                    self.world.fail(REPLIES, f"{self.user}: a binary frame from the server")
                    return
                self._dispatch(conn, json.loads(frame))
                if conn.end in CLOSE_AFTER and not conn.pinged:
                    await self._ping_into_close(conn)
        except ConnectionClosed as exc:
            self._closed(conn, exc.reason.code if exc.reason is not None else ABNORMAL)
        finally:
            self.connection_ended(conn)

    async def _ping_into_close(self, conn: WsConnection) -> None:
        """Sometimes ping just as the server is closing (its close frame follows the error
        that says why), as a browser's keepalive may: the server must not trip over it."""
        assert conn.ws is not None
        conn.pinged = True
        if self.rng.random() < 0.5:
            self._count += 1
            with trio.move_on_after(PING_WAIT):
                await conn.ws.ping(f"{self.user}-{self._count}".encode())

    def _closed(self, conn: WsConnection, code: int) -> None:
        """Check the close code against why the server said it closes."""
        conn.close_code = code
        self.world.trace.record("ws_closed", who=self.user, link=conn.link.number, code=code)
        if code == ABNORMAL:  # no close frame: the link broke or the server dropped it
            conn.end = "reset" if conn.end == "open" else conn.end
            return
        if code == POLICY_VIOLATION and conn.end == "open":
            # Dropped while a write to it was stuck (it lagged on a slow link): the write was
            # cut off, so the close frame comes without the error object before it, and its
            # code is all the client is told; replies queued behind are not owed.
            conn.end = "dropped"
            if not conn.shutdown_began:
                self.check_prompt(conn, "dropped mid-write (1008 alone)")
        expected = CLOSE_AFTER.get(conn.end)
        if expected is not None and code != expected:
            self.world.fail(REPLIES, f"{self.user}: closed with {code} after {conn.end!r}")
        elif code == MESSAGE_TOO_BIG and not self.oversize_expected:
            self.world.fail(REPLIES, f"{self.user}: closed with 1009 but sent no oversize frame")
        conn.end = "eof" if conn.end == "open" else conn.end

    async def leave(self, conn: Connection, style: str) -> None:
        """End the connection in one of WS_LEAVE_STYLES."""
        assert isinstance(conn, WsConnection) and conn.ws is not None
        self.world.trace.record("leave", who=self.user, style=style, link=conn.link.number)
        conn.leaving = True
        if style == "close":
            with trio.move_on_after(CLOSE_WAIT):
                await conn.ws.aclose()
        elif style == "reset":
            conn.link.reset()
        elif style == "vanish":
            conn.link.client.close_now()
        else:
            conn.silent = True  # takes effect when `hang_up` finds the reader tasks gone

    async def hang_up(self, conn: Connection) -> None:
        """Close this end; a silent client first waits for the server to drop it."""
        assert isinstance(conn, WsConnection)
        if conn.silent:
            await self._wait_dropped(conn)
        conn.link.client.close_now()

    async def _wait_dropped(self, conn: WsConnection) -> None:
        world, link = self.world, conn.link
        # The server reads a client's frames in order, and its session takes the next one
        # only once the append of the last is answered: a pong sent behind unconfirmed
        # messages is seen after their appends (shared-store seed 4: a replica missing, each
        # append waited out WAIT, the last pong was seen 3.3 s late and the next ping late).
        behind = len(self.pending) * world.append_bound
        bound = WS_PING_INTERVAL + WS_PING_TIMEOUT + DROP_SLACK + behind
        deadline = trio.current_time() + bound
        # Polled in simulated time: the link has no event for "the server closed its end".
        while not (link.server.closed or link.dead or world.finishing.is_set()):
            if trio.current_time() > deadline:
                if link.healthy and conn.epoch == world.oracle.epoch and world.host.up:
                    world.fail(SLOW_BOUND, f"{self.user} went silent; not dropped in {bound}s")
                return
            await trio.sleep(0.25)


class WsGarbageClient(WsClient, GarbageClient):
    """Sends bad frames; expects one non-fatal error for each, and 1009 for oversize ones."""

    oversize_expected = True

    def _garbage_expected(self, code: object) -> bool:
        return code in ("binary_frame", "frame_too_long") or super()._garbage_expected(code)

    def _on_error(self, conn: Connection, obj: dict[str, object]) -> None:
        if isinstance(conn, WsConnection) and obj.get("code") == "frame_too_long":
            conn.told_too_long = True
        super()._on_error(conn, obj)

    async def send_garbage(self) -> None:
        """One bad frame; the server must say what is wrong with it."""
        too_long, control = self.bad_texts()
        frame = self.rng.choice(
            (
                "not json",
                "[1, 2]",
                '{"type": "shout"}',
                '{"type": "send"}',
                b'{"type": "ping"}',
                json.dumps({"type": "send", "text": too_long}),
                json.dumps({"type": "send", "text": control}),
                json.dumps({"type": "hello", "key": KEY, "user": self.user}),
            )
        )
        await self.send_frame(frame)

    async def send_oversize(self, conn: Connection, sent: int) -> None:
        """A frame past the limit, in characters or only in UTF-8 bytes: the server closes
        with 1009. A server closing for a frame drops the replies it has not written yet
        (nothing may follow a close frame), so the replies to the `sent` frames before come
        first."""
        await wait_replies(conn, sent)
        conn.leaving = True  # the connection ends for this frame, shutdown or not
        limit = self.world.settings.max_line_bytes  # the WebSocket frame limit in the sim
        if self.rng.random() < 0.5:
            await self.send_frame("z" * (limit + 1))
        else:
            await self.send_frame("é" * (limit // 2 + 1))  # few enough characters

    def _closed(self, conn: WsConnection, code: int) -> None:
        # A 1009 close is the reply to an oversize frame, unless an error frame said so first.
        if code == MESSAGE_TOO_BIG and not conn.told_too_long:
            conn.errors += 1
        super()._closed(conn, code)
