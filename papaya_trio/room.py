"""The room: what every session shares (log, broadcaster, settings, key, live sessions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from papaya_trio.broadcaster import Broadcaster
from papaya_trio.keys import key_matches
from papaya_trio.logstore import LogStore
from papaya_trio.metrics import Metrics
from papaya_trio.session import Session


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """Per-room limits, all from the server's configuration."""

    history: int = 50
    max_message_bytes: int = 4096
    max_line_bytes: int = 16384
    max_lag: int = 1000
    auth_timeout: float = 10.0
    papaya_auth_timeout: float = 1.0
    idle_timeout: float = 300.0  # 0: native clients may stay silent for ever
    rate_messages: float = 10.0  # 0: no limit on messages
    rate_burst: int = 50
    rate_bytes: float = 16384.0  # 0: no limit on bytes of text
    rate_burst_bytes: int = 262144


class Room:
    """One chat room: the log, its broadcaster, and the sessions connected to it.

    Every transport builds its sessions with `session_class` (tests pass a subclass), and
    tells `metrics` what happens (a fresh registry unless the service passes its own).
    """

    def __init__(
        self,
        log: LogStore,
        key: str,
        settings: RoomSettings,
        *,
        session_class: type[Session] = Session,
        metrics: Metrics | None = None,
    ) -> None:
        self.log = log
        self.session_class = session_class
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self._key = key.encode()
        self.broadcaster = Broadcaster(settings.max_lag)
        log.on_visible = self.broadcaster.publish
        self.sessions: set[Session] = set()
        self.closed = False
        self._handshakes: set[trio.CancelScope] = set()

    def key_matches(self, candidate: str | bytes) -> bool:
        """Compare a presented key with the room's in constant time."""
        return key_matches(self._key, candidate)

    @contextmanager
    def joined(self, session: Session) -> Iterator[None]:
        """Count `session` as live for the duration of the `with` block."""
        self.sessions.add(session)
        if self.closed:  # joined after close_all: it must still hear about the shutdown
            session.close("shutdown", "the server is shutting down")
        try:
            yield
        finally:
            self.sessions.discard(session)

    @contextmanager
    def handshaking(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one authentication, cancelled if the room closes meanwhile."""
        with trio.CancelScope() as scope:
            if self.closed:
                scope.cancel()
            self._handshakes.add(scope)
            try:
                yield scope
            finally:
                self._handshakes.discard(scope)

    def close_all(self, code: str, message: str) -> None:
        """Graceful shutdown: stop pending authentications, ask every session to say
        `message` and close."""
        self.closed = True
        for scope in self._handshakes:
            scope.cancel()
        for session in list(self.sessions):
            session.close(code, message)
