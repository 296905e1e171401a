"""Raw TCP: both dialects on one port, told apart by the first byte; or, on `papaya_port`,
the papayaChat dialect alone.

`handle_tcp_stream` owns one accepted stream from sniffing to close: it reads the first bytes,
builds the dialect's peer, authenticates, runs the session and closes the stream in `finally`.
Stream exceptions become PeerGone here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from papaya_trio.admission import Ticket
from papaya_trio.fanout import Lease, direct_writer
from papaya_trio.handshake import SERVER_FULL, native_handshake, papaya_handshake
from papaya_trio.peer import PeerGone, refuse
from papaya_trio.protocol import native, papaya
from papaya_trio.protocol.decoding import NEED_DATA, NeedData
from papaya_trio.protocol.events import ClientEvent, Error, ServerEvent
from papaya_trio.protocol.native import NativeDecoder
from papaya_trio.protocol.papaya import PapayaDecoder
from papaya_trio.room import Room

logger = logging.getLogger(__name__)

RECEIVE_BYTES = 64 * 1024


@asynccontextmanager
async def _stream_errors() -> AsyncIterator[None]:
    """The one place where a stream's exceptions become PeerGone."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        # A failed TLS handshake is a BrokenResourceError caused by an ssl.SSLError.
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise PeerGone(str(cause) or type(cause).__name__) from exc


class StreamPeer:
    """A Peer over a byte stream, decoding with a sans-I/O decoder."""

    def __init__(
        self, stream: trio.abc.Stream, decoder: NativeDecoder | PapayaDecoder, label: str
    ) -> None:
        self._stream = stream
        self._decoder = decoder
        self._label = label

    @property
    def label(self) -> str:
        return self._label

    def feed(self, data: bytes | bytearray) -> None:
        """Give the decoder bytes that were read before this peer existed (the sniff)."""
        self._decoder.receive_data(data)

    async def receive(self) -> ClientEvent:
        while (event := self._decoder.next_event()) is NEED_DATA:
            async with _stream_errors():
                data = await self._stream.receive_some(RECEIVE_BYTES)
            self._decoder.receive_data(data)
        assert not isinstance(event, NeedData)
        return event

    async def send(self, events: Sequence[ServerEvent]) -> None:
        for chunk in self.render(events):
            async with _stream_errors():
                await self._stream.send_all(chunk)

    def render(self, events: Sequence[ServerEvent]) -> list[bytes]:
        """The writes that carry `events`, in order."""
        raise NotImplementedError

    def lease(self) -> Lease | None:
        """The fast path's lease of this stream: live records rendered by `render` itself, so
        the bytes are the ones `send` would write (None for TLS and other waiting streams)."""
        writer = direct_writer(self._stream)
        if writer is None:
            return None
        return Lease(type(self).__name__, self._render_joined, writer, self._finish)

    def _render_joined(self, events: Sequence[ServerEvent]) -> bytes:
        return b"".join(self.render(events))

    async def _finish(self, rest: memoryview) -> None:
        async with _stream_errors():
            await self._stream.send_all(rest)


class NativePeer(StreamPeer):
    """Native dialect: one JSON object per line; a batch of events goes out in one write."""

    def render(self, events: Sequence[ServerEvent]) -> list[bytes]:
        return [b"".join(native.encode_line(event) for event in events)]


class PapayaPeer(StreamPeer):
    """papayaChat dialect: history as raw lines in one write, each live message in its own
    write ending in NUL; welcome, acks, pongs and errors have no form in this dialect."""

    def render(self, events: Sequence[ServerEvent]) -> list[bytes]:
        return papaya.encode_writes(events)


#: Told to a native client on `papaya_port`, which is in clear for the papayaChat client only.
WRONG_PORT = Error(
    "wrong_port", "this port serves the papayaChat dialect only: use the TCP port", fatal=True
)


async def handle_tcp_stream(
    stream: trio.abc.Stream, room: Room, label: str, ticket: Ticket, *, native: bool = True
) -> None:
    """Serve one TCP connection to the end; never raises for anything the client does.

    With `native` false (on `papaya_port`) a native client is refused with `wrong_port`.
    Failed handshakes are counted on `ticket` for admission control's summary line (a flood
    must not write a log line per attempt); joins and leaves are logged one by one.
    """
    settings = room.settings
    connected_at = trio.current_time()
    peer: StreamPeer | None = None
    try:
        first: bytes | bytearray = b""
        with trio.move_on_at(connected_at + settings.auth_timeout):
            async with _stream_errors():
                first = await stream.receive_some(RECEIVE_BYTES)
        if not first:
            logger.debug("%s: closed before saying anything", label)
            ticket.note("closed before saying anything")
            return
        sizes = (settings.max_line_bytes, settings.max_message_bytes)
        if first.startswith(b"{"):
            peer = NativePeer(stream, NativeDecoder(*sizes), f"{label} native")
            peer.feed(first)
            if not native:
                logger.debug("%s: refused: native dialect on papaya_port", label)
                room.metrics.refuse(WRONG_PORT.code)
                ticket.note("refused: native dialect on papaya_port")
                await refuse(peer, WRONG_PORT)
                return
            deadline = connected_at + settings.auth_timeout
            identity = await native_handshake(peer, room, deadline, ticket)
        else:
            peer = PapayaPeer(stream, PapayaDecoder(*sizes), f"{label} papaya")
            peer.feed(first)
            deadline = connected_at + settings.papaya_auth_timeout
            identity = await papaya_handshake(peer, room, deadline, ticket)
        if identity is None:
            return
        if not ticket.promote():
            logger.debug("%s: refused: server full", label)
            room.metrics.refuse("server_full")
            ticket.note("refused: server full")
            if isinstance(peer, NativePeer):
                await refuse(peer, SERVER_FULL)
            return
        session = room.session_class(room, peer, identity)
        logger.info("%s: %s joined", peer.label, identity.user or "papayaChat client")
        with room.metrics.connected("tcp", "native" if isinstance(peer, NativePeer) else "papaya"):
            reason = await session.run()
        logger.info("%s: %s left: %s", peer.label, identity.user or "papayaChat client", reason)
    except PeerGone as exc:
        logger.debug("%s: connection lost during handshake: %s", label, exc)
        ticket.note("lost during handshake")
    finally:
        await trio.aclose_forcefully(stream)
