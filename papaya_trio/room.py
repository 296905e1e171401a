"""The room: what every session shares (log, broadcaster, settings, key, accounts, and who is
connected).

Presence: `joined` decides whether a session may take its name, takes it, snapshots who is
online for its welcome, and tells every other session, all in one synchronous step (no
checkpoint), so two connections never both win a name, and each session sees every other one
either in its welcome's list or as a later join. Leaving is announced as the `with` ends,
however the session ended. Typing hints are relayed at most once per TYPING_INTERVAL per name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from papaya_trio.accounts import Accounts
from papaya_trio.broadcaster import Broadcaster
from papaya_trio.keys import key_matches
from papaya_trio.logstore import LogStore
from papaya_trio.metrics import Metrics
from papaya_trio.protocol.events import Member, Presence, TypingNotice
from papaya_trio.session import NameTaken, Session

TYPING_INTERVAL = 2.0  # seconds: at most one typing notice per name is relayed in this time


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
    auth: str = "key"  # key, accounts or both (see handshake.judge_hello)


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
        accounts: Accounts | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.log = log
        self.accounts = accounts
        self.session_class = session_class
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self._key = key.encode()
        self.broadcaster = Broadcaster(
            settings.max_lag, recent=log.recent, on_delivered=self.metrics.delivered_direct
        )
        log.on_visible = self.broadcaster.publish
        self.sessions: set[Session] = set()
        self.closed = False
        self._handshakes: set[trio.CancelScope] = set()
        # Connected sessions by name (None: papayaChat clients), oldest first.
        self._names: dict[str | None, list[Session]] = {}
        self._typed_at: dict[str, float] = {}

    def key_matches(self, candidate: str | bytes) -> bool:
        """Compare a presented key with the room's in constant time."""
        return key_matches(self._key, candidate)

    def online(self) -> tuple[Member, ...]:
        """Who is connected: one entry per name, in the order the names arrived."""
        return tuple(
            Member(
                name,
                any(s.identity.verified for s in group),
                group[0].identity.dialect,
                len(group),
            )
            for name, group in self._names.items()
        )

    @contextmanager
    def joined(self, session: Session) -> Iterator[tuple[Member, ...]]:
        """Count `session` as live for the duration of the `with` block; yield who is online
        (itself included) for its welcome. Raises NameTaken, before joining, if its name is
        held by another connection and it is not verified."""
        identity = session.identity
        name = identity.user
        if name is not None and name in self._names and not identity.verified:
            raise NameTaken(name)
        self.sessions.add(session)
        self._names.setdefault(name, []).append(session)
        self._announce(session, "join")
        if self.closed:  # joined after close_all: it must still hear about the shutdown
            session.close("shutdown", "the server is shutting down")
        try:
            yield self.online()
        finally:
            self.sessions.discard(session)
            group = self._names[name]
            group.remove(session)
            if not group:
                del self._names[name]
                if name is not None:
                    self._typed_at.pop(name, None)
            self._announce(session, "leave")

    def _announce(self, session: Session, event: str) -> None:
        identity = session.identity
        notice = Presence(event, identity.user, identity.verified, identity.dialect)
        for other in self.sessions:
            if other is not session:
                other.notify(notice)

    def typing(self, session: Session) -> None:
        """Relay that `session`'s user is typing to everybody else, at most once per
        TYPING_INTERVAL per name; more often is dropped."""
        name = session.identity.user
        if name is None:
            return
        now = trio.current_time()
        last = self._typed_at.get(name)
        if last is not None and now - last < TYPING_INTERVAL:
            return
        self._typed_at[name] = now
        notice = TypingNotice(name)
        for other in self.sessions:
            if other.identity.user != name:
                other.notify(notice)

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
