"""The accept loop and graceful shutdown, independent of real sockets.

`ChatServer.serve` takes any trio listeners (real TCP, or `trio.testing` memory listeners) and
runs each accepted connection in a handler task in its own nursery, apart from the accept
loops (as hypercorn does), so that shutdown can stop accepting first, then give the sessions a
deadline to say goodbye, then cancel whatever is left.

The accept loop asks admission control (`papaya_trio.admission`) for a ticket for each
connection, before anything is read: a refused connection is closed at once, without a task;
an admitted one gets a handler task (which releases the ticket however it ends), TCP
keepalive and runs its transport inside the ticket's cancel scope, through which admission
control evicts a handshake or ends it at the pressure deadline. The transports promote the
ticket once the key was right.

Each chat connection's stream is wrapped to count its bytes (`metrics`). Connections to the
metrics listener are not clients: they are served apart (`_scrape`), outside
`max_connections` and the shutdown wait, at most MAX_SCRAPES at once.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Sequence

import trio

from papaya_trio.admission import Admission, AdmissionSettings, Ticket
from papaya_trio.keepalive import TcpKeepalive, set_tcp_keepalive
from papaya_trio.room import Room
from papaya_trio.transports.http import WebSettings, handle_http_stream
from papaya_trio.transports.tcp import handle_tcp_stream

logger = logging.getLogger(__name__)

# Accept errors that mean "out of resources for now": wait, then go on (as trio.serve_listeners).
TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY_DELAY = 0.1
MAX_SCRAPES = 8  # metrics requests served at once on the metrics listener


class ChatServer:
    """Serves one room on a set of listeners until `shutdown()` is called.

    `admission` holds every connection limit; without it, the defaults with
    `max_connections` members. `keepalive` is set on every accepted TCP socket.
    """

    def __init__(
        self,
        room: Room,
        *,
        max_connections: int = 1024,
        shutdown_deadline: float = 5.0,
        web: WebSettings | None = None,
        admission: AdmissionSettings | None = None,
        keepalive: TcpKeepalive | None = None,
    ) -> None:
        self.room = room
        self.web = web if web is not None else WebSettings()
        if admission is None:
            admission = AdmissionSettings(max_connections=max_connections)
        self.admission = Admission(admission)
        self.keepalive = keepalive if keepalive is not None else TcpKeepalive()
        self.shutdown_deadline = shutdown_deadline
        self.connections = 0
        self._scrapes = 0
        self._stop = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._numbers = itertools.count(1)
        room.metrics.watch(room.log, room.broadcaster, lambda: self.connections)

    def shutdown(self) -> None:
        """Begin a graceful shutdown; `serve` returns when it is done."""
        self._stop.set()

    async def serve(
        self,
        tcp_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        http_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        papaya_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        metrics_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve until shutdown, then close everything within the deadline.

        `tcp_listeners` carry both TCP dialects; `http_listeners` the browser client and its
        WebSocket; `papaya_listeners` the papayaChat dialect alone; `metrics_listeners` only
        `/metrics`. The listeners are closed on return. Returns after every connection handler
        has ended.
        """
        listeners = [*tcp_listeners, *http_listeners, *papaya_listeners, *metrics_listeners]
        async with trio.open_nursery() as handlers:
            handlers.start_soon(self.admission.serve_reports)
            try:
                async with trio.open_nursery() as acceptors:
                    for listener in tcp_listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers, "tcp")
                    for listener in http_listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers, "http")
                    for listener in papaya_listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers, "papaya")
                    for listener in metrics_listeners:
                        acceptors.start_soon(self._accept_loop, listener, handlers, "metrics")
                    task_status.started()
                    await self._stop.wait()
                    acceptors.cancel_scope.cancel()
            finally:
                # Shielded: when serve is cancelled from outside, the first close would
                # otherwise re-raise that cancellation and leave the other listeners open.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
            logger.info("shutting down: %d connections to close", self.connections)
            self.room.close_all("shutdown", "the server is shutting down")
            with trio.move_on_after(self.shutdown_deadline) as deadline:
                await self._idle.wait()
            if deadline.cancelled_caught:
                logger.warning("shutdown deadline passed: dropping %d", self.connections)
            handlers.cancel_scope.cancel()
        self.admission.report()

    async def _accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], handlers: trio.Nursery, kind: str
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in TRANSIENT_ACCEPT_ERRORS:
                    raise
                logger.error("accept failed, retrying shortly: %s", exc)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            await self._dispatch(stream, handlers, kind)

    async def _dispatch(self, stream: trio.abc.Stream, handlers: trio.Nursery, kind: str) -> None:
        """Start the handler of an accepted connection, or refuse it at once."""
        if kind == "metrics":
            handlers.start_soon(self._scrape, stream)
            return
        address = _peer_address(stream)
        ticket = self.admission.admit(address)
        if ticket is None:
            # Refused: closed at once, nothing read, no task started (counted for the
            # summary). Under a flood this is most connections, so it must be cheap.
            self.room.metrics.refuse("admission")
            await trio.aclose_forcefully(stream)
            return
        handlers.start_soon(self._handle, stream, kind, address, ticket)

    async def _scrape(self, stream: trio.abc.Stream) -> None:
        """A connection to the metrics listener. It is no client: it neither counts toward
        `max_connections` nor delays shutdown, and at most MAX_SCRAPES are served at once
        (more are closed at once), so a flood there cannot crowd out the chat."""
        if self._scrapes >= MAX_SCRAPES:
            await trio.aclose_forcefully(stream)
            return
        self._scrapes += 1
        try:
            label = self._describe(_peer_address(stream), "metrics")
            stream = self.room.metrics.count_bytes(stream, "metrics")
            web = self.web.metrics_only(self.room.metrics)
            await handle_http_stream(stream, self.room, label, None, web)
        finally:
            self._scrapes -= 1

    async def _handle(
        self, stream: trio.abc.Stream, kind: str, address: object, ticket: Ticket
    ) -> None:
        self.connections += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            with ticket:
                if (socket_stream := _socket_stream(stream)) is not None:
                    self._set_keepalive(socket_stream)
                label = self._describe(address, kind)
                stream = self.room.metrics.count_bytes(stream, kind)
                with ticket.scope:
                    if kind == "http":
                        await handle_http_stream(stream, self.room, label, ticket, self.web)
                    else:
                        native = kind == "tcp"
                        await handle_tcp_stream(stream, self.room, label, ticket, native=native)
                if ticket.scope.cancelled_caught and not ticket.evicted:  # evictions: counted
                    ticket.note("cut short under pressure")
        finally:
            await trio.aclose_forcefully(stream)
            self.connections -= 1
            if not self.connections:
                self._idle.set()

    def _set_keepalive(self, stream: trio.SocketStream) -> None:
        try:
            set_tcp_keepalive(stream.socket, self.keepalive)
        except OSError as exc:  # the peer is already gone; its first read will say so
            logger.debug("cannot set keepalive: %s", exc)

    def _describe(self, address: object, kind: str) -> str:
        if address is not None:
            return f"{kind} {format_address(address)}"
        return f"{kind} #{next(self._numbers)}"


def _socket_stream(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP stream under `stream` (under TLS, too), or None (memory streams)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream if isinstance(stream, trio.SocketStream) else None


def _peer_address(stream: trio.abc.Stream) -> object:
    """The peer's socket address; for a stream that is not a socket, its `peer_address`
    attribute if it has one (the simulation's links), else None (memory streams)."""
    if (socket_stream := _socket_stream(stream)) is not None:
        try:
            address: object = socket_stream.socket.getpeername()
        except OSError:
            return None
        return address
    return getattr(stream, "peer_address", None)


def format_address(address: object) -> str:
    """`127.0.0.1:7722` or `[::1]:7722` from a socket address tuple."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
