"""How the chat load's clients speak each dialect: joining, sending, finding deliveries.

The generator (`chatload`) is the same for both dialects: it joins N clients, paces the
sends and counts the deliveries. A *wire* supplies what differs:

- **native** (docs/protocol.md): a hello with the room's key, then the welcome; a message
  is a ``send`` object; the received stream is scanned for ``message`` lines whose text is
  one of ours. The server's sequence numbers must grow strictly at every client, so a count
  equal to the number sent means every client got every message exactly once, in one order.
- **papaya** (the papayaChat dialect, the original C daemon's protocol): 128 bytes of key,
  then ``user: text`` lines. The dialect has no welcome, no replies and no sequence numbers:

  * *joining*: the first client says one line (`JOIN_TEXT`) and waits until it comes back
    as a live message; every later client is admitted once the history tail the server
    sends on connect has arrived (it holds that line). A wrong key is a socket closed
    without a byte, so a client that reads end-of-file first was refused.
  * *counting*: a message's number k is in its text (``bench k``), which gives its latency;
    each client keeps a bitmap of the numbers it received, so a repeat is counted whatever
    order the server stored concurrent messages in. (That every client saw one order cannot
    be checked without sequence numbers.)
  * *framing*: history lines end in a newline; live messages in a NUL (the original daemon
    writes each message with its newline replaced by a NUL; papaya-trio writes a burst
    joined by newlines with one final NUL), so either byte ends a line.

The hello, the welcome and the native sends go through the shared client module
(`papaya_trio.protocol.client`); the papayaChat lines and key length come from the
server's own dialect module. Received bytes are scanned with one regular expression per
dialect instead of being decoded, so the generator's CPU stays far below the server's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar, Protocol

import trio

from papaya_trio.protocol import client as protocol
from papaya_trio.protocol import papaya
from papaya_trio.protocol.rules import KEY_CHARS

#: The longest line a client buffers (the server's default max line is 16 KiB).
MAX_LINE = 64 * 1024
RECEIVE_BYTES = 64 * 1024
TEXT_PREFIX = "bench "
#: What the first papayaChat client says to learn that the room is open (not a bench text).
JOIN_TEXT = "joining the bench"
DIALECTS = ("native", "papaya")


class LoadError(Exception):
    """The generator could not set up its clients."""


class Client:
    """One connection: its stream, and what it has received."""

    def __init__(self, index: int, stream: trio.abc.Stream, head: int, rest: bytes) -> None:
        self.index = index
        self.stream = stream
        #: Native: the newest message before we joined (older ones are history).
        self.head = head
        self.last_seq = head
        #: Papaya: one bit per message number, set once received.
        self.seen = bytearray()
        #: Bytes received after the last complete line.
        self.pending = bytearray(rest)
        self.out_of_order = 0
        self.errors = 0
        self.first_error = ""
        self.closed_by_server = False


def bench_text(number: int, size: int) -> str:
    """Message `number`'s text, padded to `size` characters."""
    return f"{TEXT_PREFIX}{number} ".ljust(size, "x")


async def _read_until(stream: trio.SocketStream, done: re.Pattern[bytes], index: int) -> bytes:
    """Read until `done` matches what arrived; LoadError on end-of-file or too much."""
    data = bytearray()
    while not done.search(data):
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise LoadError(f"client {index}: closed by the server: {bytes(data[:200])!r}")
        if len(data) > MAX_LINE:
            raise LoadError(f"client {index}: no room in {MAX_LINE} bytes: {bytes(data[:200])!r}")
        data += chunk
    return bytes(data)


class Wire(Protocol):
    """One dialect, from the generator's side."""

    name: ClassVar[str]

    async def join(
        self, stream: trio.SocketStream, index: int, key: str, first: bool
    ) -> tuple[int, bytes]:
        """Authenticate client `index`; return the room's head and the bytes read beyond.

        `first` is the first client to join (the others join after it). Raises LoadError
        when the server refuses or closes.
        """

    def line(self, index: int, number: int, size: int) -> bytes:
        """The bytes client `index` sends for message `number`, `size` characters of text."""

    def take(self, client: Client, block: bytes, sent: int) -> Iterator[int]:
        """The numbers (below `sent`) of the messages `client` got for the first time in
        `block`, a run of complete lines; errors and repeats are counted on `client`."""

    def last_line_end(self, data: bytearray) -> int:
        """Index of the last byte that ends a line in `data`, or -1."""


# The server writes compact JSON with "seq" before "text" (papaya_trio.protocol.native).
# Numbers are bounded in length, so that a hostile stream cannot make int() refuse them.
_NATIVE_MESSAGE = re.compile(rb'"type":"message","seq":(\d{1,19}),[^\n]*?"text":"bench (\d{1,9}) ')
_NATIVE_ERROR = b'"type":"error"'
_NEWLINE = re.compile(rb"\n")


class NativeWire:
    """The native dialect (JSON lines)."""

    name: ClassVar[str] = "native"

    async def join(
        self, stream: trio.SocketStream, index: int, key: str, first: bool
    ) -> tuple[int, bytes]:
        """Say hello; the welcome's head, and whatever followed it in the same read."""
        await stream.send_all(protocol.encode(protocol.hello(key, f"b{index}", None)))
        line, _, rest = (await _read_until(stream, _NEWLINE, index)).partition(b"\n")
        try:
            protocol.check_first_line(line)
            welcome = protocol.parse_event(protocol.parse_json(line))
        except protocol.RemoteProtocolError as exc:
            raise LoadError(f"client {index}: {exc}: {line[:200]!r}") from None
        if isinstance(welcome, protocol.Welcome):
            return welcome.head, rest
        raise LoadError(f"client {index}: refused: {line[:200]!r}")

    def line(self, index: int, number: int, size: int) -> bytes:
        """A ``send`` object with an id, so a resend would be stored once."""
        return protocol.encode(protocol.send(bench_text(number, size), f"k{number}"))

    def take(self, client: Client, block: bytes, sent: int) -> Iterator[int]:
        """Messages after the head, in strictly growing sequence numbers."""
        for match in _NATIVE_MESSAGE.finditer(block):
            seq = int(match[1])
            if seq <= client.last_seq:
                client.out_of_order += 1
                continue
            client.last_seq = seq
            if seq > client.head and (number := int(match[2])) < sent:
                yield number
        if _NATIVE_ERROR in block:
            client.errors += block.count(_NATIVE_ERROR)
            if not client.first_error:
                start = block.index(_NATIVE_ERROR)
                client.first_error = block[max(0, start - 1) : start + 200].decode(errors="replace")

    def last_line_end(self, data: bytearray) -> int:
        """Lines end in a newline."""
        return data.rfind(b"\n")


_PAPAYA_MESSAGE = re.compile(rb"b\d{1,9}: bench (\d{1,9}) ")
_ANY_LINE_END = re.compile(b"[" + re.escape(papaya.LINE_ENDS) + b"]")
_JOINED = re.compile(b"b0: " + re.escape(JOIN_TEXT.encode()) + _ANY_LINE_END.pattern)


class PapayaWire:
    """The papayaChat dialect (key, then ``user: text`` lines; see the module docstring)."""

    name: ClassVar[str] = "papaya"

    def __init__(self, messages: int) -> None:
        self._bitmap_bytes = (messages + 7) // 8

    async def join(
        self, stream: trio.SocketStream, index: int, key: str, first: bool
    ) -> tuple[int, bytes]:
        """Present the key; the first client also says `JOIN_TEXT` and waits for it."""
        if len(key) != KEY_CHARS or not key.isascii():
            raise LoadError(f"the papayaChat dialect needs a {KEY_CHARS}-character ASCII key")
        await stream.send_all(key.encode())
        if first:
            await stream.send_all(papaya.encode_client_line("b0", JOIN_TEXT))
        received = await _read_until(stream, _JOINED if first else _ANY_LINE_END, index)
        # What precedes the last line end is history (or our own join line): no bench message.
        end = self.last_line_end(bytearray(received))
        return 0, received[end + 1 :]

    def line(self, index: int, number: int, size: int) -> bytes:
        """``b<index>: bench <number> xxx...`` and a newline."""
        return papaya.encode_client_line(f"b{index}", bench_text(number, size))

    def take(self, client: Client, block: bytes, sent: int) -> Iterator[int]:
        """Each number once per client, in whatever order the server stored them."""
        if not client.seen:
            client.seen = bytearray(self._bitmap_bytes)
        seen = client.seen
        for match in _PAPAYA_MESSAGE.finditer(block):
            number = int(match[1])
            if number >= sent:
                continue
            byte, bit = divmod(number, 8)
            if seen[byte] >> bit & 1:
                client.out_of_order += 1
                continue
            seen[byte] |= 1 << bit
            yield number

    def last_line_end(self, data: bytearray) -> int:
        """Lines end in a newline or a NUL."""
        return max(data.rfind(b"\n"), data.rfind(b"\x00"))
