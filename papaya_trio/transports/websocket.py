"""WebSocket: the native dialect's JSON objects, one per text frame, over trio-websocket.

Theory of operation
-------------------
The HTTP port's handler (`transports.http`) reads the request head and hands a WebSocket
upgrade to `serve_websocket`, which owns the connection from the opening handshake to the
close, in a nursery of its own:

- trio-websocket's reader task (started by `wrap_server_stream`) parses frames and answers
  pings; its message queue holds one message, so a client that floods waits on TCP.
- the opening handshake (path and `Origin` checks, then accept) runs under the HTTP port's
  handshake deadline. Without `allowed_origins` a browser may connect only from a page of this
  server: its `Origin` must be the scheme of this port and the `Host` it asked for, which a
  page elsewhere cannot fake (its browser sends its own origin). Clients that are not
  browsers send no `Origin` and are let through: the key, not the origin, is what admits them;
  the check keeps other sites' pages from using a visitor's browser as theirs;
- `WebSocketPeer` is the Peer the session code sees: frames in, events out. It maps
  trio-websocket's exceptions to PeerGone in `_websocket_errors` and nowhere else;
- a keepalive task pings every `ping_interval` seconds (trio time) and, when a pong does not
  come back within `ping_timeout`, closes the stream under the session, which then ends as
  "connection lost";
- after the session, the close handshake runs under the same timeout as the opening one,
  with a close code that says why (1001 on shutdown, 1009 for an oversize message, ...).

trio-websocket measures its message limit with `len()`, in characters for text; the peer
checks the exact UTF-8 size itself, so `max_message_bytes` is a bound in bytes either way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)
from wsproto.utilities import LocalProtocolError

from papaya_trio.admission import Ticket
from papaya_trio.handshake import SERVER_FULL, native_handshake
from papaya_trio.metrics import Metrics
from papaya_trio.peer import PeerGone, refuse
from papaya_trio.protocol.events import ClientEvent, EndOfStream, ServerEvent, Violation
from papaya_trio.protocol.native import encode_json, parse_object
from papaya_trio.room import Room

logger = logging.getLogger(__name__)

WEBSOCKET_PATH = "/ws"
MESSAGE_QUEUE_SIZE = 1
LINGER_READ_BYTES = 64 * 1024

# Close codes (RFC 6455 section 7.4.1, and 1013 from the IANA registry).
NORMAL = 1000
GOING_AWAY = 1001
ABNORMAL = 1006
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013

# Why a session ended (Session.run's answer) -> how the WebSocket is closed.
CLOSE_CODES = {
    "client closed": NORMAL,
    "shutdown": GOING_AWAY,
    "frame_too_long": MESSAGE_TOO_BIG,
    "server_full": TRY_AGAIN_LATER,
}


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """Limits of the WebSocket endpoint (the HTTP port's share of the configuration)."""

    max_message_bytes: int = 16384
    handshake_timeout: float = 10.0
    ping_interval: float = 30.0
    ping_timeout: float = 20.0
    allowed_origins: frozenset[str] = frozenset()
    scheme: str = "http"  # of this port ("https" with TLS), for the same-origin check


@contextmanager
def _websocket_errors() -> Iterator[None]:
    """The one place where trio-websocket's exceptions become PeerGone."""
    try:
        yield
    except ConnectionClosed as exc:
        reason = exc.reason
        why = f"closed ({reason.code} {reason.reason or reason.name})" if reason else "closed"
        raise PeerGone(why) from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise PeerGone(str(exc) or type(exc).__name__) from exc


class WebSocketPeer:
    """A Peer over a WebSocket connection: one JSON object per text frame, each way."""

    def __init__(
        self, ws: WebSocketConnection, label: str, max_text_bytes: int, max_frame_bytes: int
    ) -> None:
        self._ws = ws
        self._label = label
        self._max_text_bytes = max_text_bytes
        self._max_frame_bytes = max_frame_bytes
        self.oversize = False  # set once a frame passed the limit: close with 1009

    def __repr__(self) -> str:
        state = f"CLOSED {self._ws.closed.code}" if self._ws.closed else "OPEN"
        return f"<WebSocketPeer {self._label} {state}>"

    @property
    def label(self) -> str:
        return self._label

    async def receive(self) -> ClientEvent:
        with _websocket_errors():
            try:
                frame = await self._ws.get_message()
            except ConnectionClosed as exc:
                if exc.reason is not None and exc.reason.code == MESSAGE_TOO_BIG:
                    # trio-websocket sent the 1009 itself, for a frame over the limit in
                    # characters; nothing of that frame was delivered.
                    self.oversize = True
                    logger.info("%s: frame too long: closed with 1009", self._label)
                elif exc.reason is not None and exc.reason.code != ABNORMAL:
                    return EndOfStream()  # the client closed with a close frame
                raise
        if isinstance(frame, bytes):
            return Violation(
                "binary_frame", "binary frames are not supported: send JSON in text frames"
            )
        if len(frame.encode()) > self._max_frame_bytes:
            self.oversize = True
            return Violation(
                "frame_too_long",
                f"frame is longer than {self._max_frame_bytes} bytes",
                fatal=True,
            )
        return parse_object(frame, self._max_text_bytes)

    async def send(self, events: Sequence[ServerEvent]) -> None:
        for event in events:
            with _websocket_errors():
                await self._ws.send_message(encode_json(event))

    def lease(self) -> None:
        """No fast path: trio-websocket's reader task writes pongs to the stream itself."""
        return None


async def serve_websocket(
    stream: trio.abc.Stream,
    room: Room,
    label: str,
    ticket: Ticket,
    settings: WebSocketSettings,
    deadline: float,
    host: str | None = None,
) -> None:
    """Serve one WebSocket upgrade request on `stream` to the end.

    The opening handshake must be done by `deadline` (trio time). `host` is the request's
    `Host` header, for the same-origin check. The caller owns `stream` and
    closes it afterwards; this function never raises for anything the client does.
    """
    oversize = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws: WebSocketConnection | None = None
                with room.handshaking(), trio.move_on_at(deadline):
                    request = await wrap_server_stream(
                        nursery,
                        stream,
                        message_queue_size=MESSAGE_QUEUE_SIZE,
                        max_message_size=settings.max_message_bytes,
                    )
                    ws = await _accept(request, settings, label, host, ticket, room.metrics)
                if ws is None:
                    return
                peer = WebSocketPeer(
                    ws, label, room.settings.max_message_bytes, settings.max_message_bytes
                )
                nursery.start_soon(_keep_alive, ws, stream, settings, label)
                code = await _run_session(peer, room, ticket)
                oversize = peer.oversize
                with trio.move_on_after(settings.handshake_timeout):
                    await ws.aclose(MESSAGE_TOO_BIG if oversize else code)
            except PeerGone as exc:
                logger.debug("%s: connection lost during handshake: %s", label, exc)
                ticket.note("lost during handshake")
            finally:
                nursery.cancel_scope.cancel()  # the reader and keepalive tasks
    except* LocalProtocolError:
        # trio-websocket's reader answers a ping with a pong even after our close frame,
        # which wsproto refuses; the connection is ending anyway, so just let it go.
        logger.info("%s: ping during the closing handshake: dropped", label)
    if oversize:  # the reader is gone: the stream is ours alone again
        with trio.move_on_after(settings.handshake_timeout):
            await _linger(stream)


async def _accept(
    request: WebSocketRequest,
    settings: WebSocketSettings,
    label: str,
    host: str | None,
    ticket: Ticket,
    metrics: Metrics,
) -> WebSocketConnection | None:
    """Check the path and the Origin; accept, or reject with an HTTP status (counted on
    `ticket` for the summary line, not logged one by one, and in the metrics)."""
    with _websocket_errors():
        path = request.path.split("?", 1)[0]
        if path != WEBSOCKET_PATH:
            logger.debug("%s: refused: no WebSocket at %r", label, path)
            metrics.refuse("websocket_path")
            ticket.note("ws: refused: no WebSocket at that path")
            await request.reject(404, body=b"no WebSocket here; try " + WEBSOCKET_PATH.encode())
            return None
        origin = _header(request, b"origin")
        if origin is not None and not _origin_allowed(origin, host, settings):
            logger.debug("%s: refused: origin %r is not allowed", label, origin)
            metrics.refuse("origin")
            ticket.note("ws: refused: origin not allowed")
            await request.reject(403, body=b"this Origin is not allowed\n")
            return None
        return await request.accept()


def _origin_allowed(origin: str, host: str | None, settings: WebSocketSettings) -> bool:
    """Whether a browser on a page from `origin` may connect (see the module docstring)."""
    allowed = settings.allowed_origins
    if allowed:
        return "*" in allowed or origin in allowed
    return host is not None and origin.lower() == f"{settings.scheme}://{host.lower()}"


def _header(request: WebSocketRequest, name: bytes) -> str | None:
    for key, value in request.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _run_session(peer: WebSocketPeer, room: Room, ticket: Ticket) -> int:
    """Authenticate and run the session; return the close code that says how it ended."""
    deadline = trio.current_time() + room.settings.auth_timeout
    identity = await native_handshake(peer, room, deadline, ticket, dialect="websocket")
    if identity is None:
        return GOING_AWAY if room.closed else POLICY_VIOLATION
    if not ticket.promote():
        logger.debug("%s: refused: server full", peer.label)
        room.metrics.refuse("server_full")
        ticket.note("refused: server full")
        await refuse(peer, SERVER_FULL)
        return TRY_AGAIN_LATER
    session = room.session_class(room, peer, identity)
    logger.info("%s: %s joined", peer.label, identity.user)
    with room.metrics.connected("websocket", "native"):
        reason = await session.run()
    logger.info("%s: %s left: %s", peer.label, identity.user, reason)
    return CLOSE_CODES.get(reason, POLICY_VIOLATION)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read and drop what the client still sends until it closes.

    After an oversize frame the rest of it may still be arriving; closing a socket with
    unread data resets the connection, and the client could lose the 1009 close frame.
    """
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(LINGER_READ_BYTES):
            pass


async def _keep_alive(
    ws: WebSocketConnection, stream: trio.abc.Stream, settings: WebSocketSettings, label: str
) -> None:
    """Ping every `ping_interval`; drop the connection if a pong is `ping_timeout` late."""
    for number in itertools.count(1):
        await trio.sleep(settings.ping_interval)
        with trio.move_on_after(settings.ping_timeout):
            try:
                await ws.ping(number.to_bytes(8, "big"))  # unique payloads, no randomness
            except ConnectionClosed:
                return
            continue
        logger.warning("%s: no pong within %gs: dropping", label, settings.ping_timeout)
        # Closing the stream wakes the reader and any writer with an error, so the session
        # ends as "connection lost" through the usual path.
        await trio.aclose_forcefully(stream)
        return
