"""The client side of the wire: a bounded frame reader and the lines clients write."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import trio

from papaya_trio.records import Record

FRAME_LIMIT = 1 << 20  # far above any line the server may send; past it the server is wrong


class FrameTooLong(Exception):
    """The server sent more than FRAME_LIMIT bytes without a terminator."""


class FrameReader:
    """Splits what a client reads into frames, each ending in one of `terminators`.

    A slow reader passes `pause` (which says how long to wait before each read) and a
    small `chunk`.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        terminators: bytes,
        *,
        chunk: int = 4096,
        pause: Callable[[], float] | None = None,
    ) -> None:
        self._stream = stream
        self._terminators = terminators
        self._chunk = chunk
        self._pause = pause
        self._buffer = bytearray()
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes read but not yet handed out."""
        return len(self._buffer)

    async def next(self) -> tuple[bytes, int] | None:
        """The next frame and its terminator byte; None at end of stream."""
        buffer = self._buffer
        while True:
            if len(self._terminators) == 1:  # the native dialect's lines
                index = buffer.find(self._terminators, self._scanned)
            else:
                index = -1
                for terminator in self._terminators:
                    at = buffer.find(terminator, self._scanned)
                    if at != -1 and (index == -1 or at < index):
                        index = at
            if index != -1:
                frame = bytes(self._buffer[:index])
                terminator = self._buffer[index]
                del self._buffer[: index + 1]
                self._scanned = 0
                return frame, terminator
            self._scanned = len(self._buffer)
            if len(self._buffer) > FRAME_LIMIT:
                raise FrameTooLong(f"{len(self._buffer)} bytes without a frame end")
            if self._pause is not None:
                await trio.sleep(self._pause())
            data = await self._stream.receive_some(self._chunk)
            if not data:
                return None
            self._buffer += data


def line(**fields: Any) -> bytes:
    """One native-dialect line."""
    return json.dumps(fields, ensure_ascii=False).encode() + b"\n"


def record_from(obj: dict[str, Any]) -> Record:
    """The record a `message` object describes (client ids are not sent to clients; the
    optional action, dialect and verified fields are)."""
    moment = datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
    time_ms = int(moment.timestamp() * 1000 + 0.5)
    return Record(
        obj["seq"],
        time_ms,
        obj["user"],
        obj["text"],
        action=obj.get("action", False),
        dialect=obj.get("dialect"),
        verified=obj.get("verified", False),
    )
