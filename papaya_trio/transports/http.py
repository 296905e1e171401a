"""The HTTP port: the browser client's files and the WebSocket endpoint on one port.

`handle_http_stream` owns one accepted connection. It reads the request head with h11 under the
handshake deadline, then either answers it from the static site (one request per connection)
or, for a WebSocket upgrade, replays the bytes it read to trio-websocket through
`PrefixedStream`. (trio-websocket cannot do the dispatch itself: wsproto refuses a request
without upgrade headers with a bare 400 before the server sees it.) Stream exceptions become
`PeerGone` in `_stream_errors` and nowhere else in this module.

With `metrics = "http"` the port also answers `GET /metrics` (`metrics_response`); a metrics
listener of its own runs the same handler with `WebSettings.metrics_only`: `/metrics` and 404,
no page and no WebSocket.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import h11
import trio

from papaya_trio.admission import Ticket
from papaya_trio.metrics import METRICS_PATH, Metrics
from papaya_trio.peer import PeerGone
from papaya_trio.room import Room
from papaya_trio.transports.static import Response, StaticSite, render, request_path
from papaya_trio.transports.websocket import WebSocketSettings, serve_websocket

logger = logging.getLogger(__name__)

RECEIVE_BYTES = 16 * 1024
MAX_REQUEST_HEAD = 16 * 1024
ANSWER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the HTTP port serves: the browser client's files, the WebSocket limits, and
    whether it serves the metrics."""

    site: StaticSite = field(default_factory=StaticSite)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    metrics: Metrics | None = None  # served at /metrics when set
    chat: bool = True  # the WebSocket endpoint; off on the metrics listener

    def metrics_only(self, metrics: Metrics) -> WebSettings:
        """What a metrics listener serves: `/metrics`, and 404 for anything else."""
        return WebSettings(StaticSite(), self.websocket, metrics, chat=False)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request as far as we read it: h11's view, and the raw bytes (for replay)."""

    conn: h11.Connection
    request: h11.Request
    raw: bytes

    @property
    def is_websocket(self) -> bool:
        return any(
            name == b"upgrade" and value.lower() == b"websocket"
            for name, value in self.request.headers
        )

    @property
    def host(self) -> str | None:
        """The `Host` the client asked for (h11 makes HTTP/1.1 requests send one)."""
        for name, value in self.request.headers:
            if name == b"host":
                return value.decode("latin-1")
        return None


class BadRequest(Exception):
    """The request head is not valid HTTP/1.1; `status` is the answer h11 suggests."""

    def __init__(self, status: int, conn: h11.Connection) -> None:
        super().__init__(status)
        self.status = status
        self.conn = conn


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first yields `prefix`, then whatever `stream` receives."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            raise trio.ClosedResourceError("this stream cannot half-close")
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


@contextmanager
def _stream_errors() -> Iterator[None]:
    """The one place where this module's stream exceptions become PeerGone."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise PeerGone(str(exc) or type(exc).__name__) from exc


async def read_request_head(stream: trio.abc.Stream) -> RequestHead | None:
    """Read until one request head is complete; None if the client closed first."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, conn) from None
        if isinstance(event, h11.Request):
            return RequestHead(conn, event, bytes(raw))
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert event is h11.NEED_DATA, event  # a server sees nothing else before a request
        with _stream_errors():
            data = bytes(await stream.receive_some(RECEIVE_BYTES))
        raw += data
        conn.receive_data(data)


async def handle_http_stream(
    stream: trio.abc.Stream, room: Room, label: str, ticket: Ticket | None, web: WebSettings
) -> None:
    """Serve one connection to the HTTP port to the end; never raises for anything the client
    does. The request head and the WebSocket handshake share one deadline. The connection is a
    handshake for admission control until a WebSocket client's key was right; `ticket` is None
    on the metrics listener, which admission control does not govern."""
    deadline = trio.current_time() + web.websocket.handshake_timeout
    try:
        head: RequestHead | None = None
        with room.handshaking(), trio.move_on_at(deadline) as timer:
            head = await read_request_head(stream)
        if head is None:
            reason = "timed out" if timer.cancelled_caught else "closed"
            logger.debug("%s: %s before a complete request", label, reason)
            _note(ticket, f"http: {reason} before a request")
            return
        if head.is_websocket and web.chat and ticket is not None:
            ws_label = label.replace("http", "ws", 1)
            stream = PrefixedStream(stream, head.raw)
            await serve_websocket(
                stream, room, ws_label, ticket, web.websocket, deadline, head.host
            )
            return
        request = head.request
        response = metrics_response(web.metrics, request) or web.site.respond(
            request.method, request.target, full=ticket is not None and ticket.members_full
        )
        logger.debug("%s: %r %r %d", label, request.method, request.target, response.status)
        await _answer(stream, head.conn, response, head_only=request.method == b"HEAD")
    except BadRequest as exc:
        logger.debug("%s: bad HTTP request (%d)", label, exc.status)
        _note(ticket, "http: bad request")
        if exc.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            answer = Response(exc.status, "text/plain; charset=utf-8", b"bad request\n")
            await _answer(stream, exc.conn, answer)
    except PeerGone as exc:
        logger.debug("%s: connection lost: %s", label, exc)
        _note(ticket, "http: connection lost")
    finally:
        await trio.aclose_forcefully(stream)


def _note(ticket: Ticket | None, outcome: str) -> None:
    if ticket is not None:
        ticket.note(outcome)


def metrics_response(metrics: Metrics | None, request: h11.Request) -> Response | None:
    """The scrape of `GET /metrics` when this port serves the metrics, else None."""
    if metrics is None or request.method not in (b"GET", b"HEAD"):
        return None
    if request_path(request.target) != METRICS_PATH:
        return None
    body, content_type = metrics.exposition()
    return Response(200, content_type, body)


async def _answer(
    stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, head_only: bool = False
) -> None:
    """Best-effort write of a response under a timeout: a client that does not read cannot
    hold the connection."""
    data = render(conn, response, head_only=head_only)
    with trio.move_on_after(ANSWER_TIMEOUT), suppress(PeerGone), _stream_errors():
        await stream.send_all(data)
