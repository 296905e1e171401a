"""Admission control: the one place that decides who may connect, handshake and stay.

Theory of operation
-------------------
Every accepted connection, on the TCP port (both dialects) and on the HTTP port (pages and
WebSocket), asks `Admission.admit` for a `Ticket` before a single byte is read. The ticket
starts as a *handshake*; the transport `promote`s it to a *member* once the key was right, and
the connection handler `release`s it when the connection ends. Connections are counted by
address *group*: an IPv4 address, or the /64 network of an IPv6 address (one host usually owns
a whole /64). A connection whose address is unknown (the in-memory streams of the tests, and
the simulation's links unless its profile gives them addresses) is a group of its own.

What it guarantees, and why:

1. **Members are never pushed out by handshakers.** Nothing here ever touches a member:
   eviction, pressure deadlines and refusals apply to handshakes only. There are at most
   `max_connections` members; a promotion past that fails (the client is told `server_full`).
2. **Handshakes have their own budget**, `max_handshakes`, apart from the members', so
   connections that never authenticate cannot take a member's place. When the budget is used
   up, a newcomer may evict a handshake if its own group holds none, or at least two fewer
   than the busiest group, and has not had a handshake evicted within the last
   `pressure_auth_timeout`; any other newcomer is refused. The victim is the oldest handshake
   of a group that was itself evicted lately (it is flooding; the first `VICTIM_SCAN` such
   groups are looked at), else of the busiest group (the one that got there first). Hence a
   client from an address that is not flooding always gets a slot, however many addresses
   the flood comes from; it is evicted in turn only when no flooding group holds one of the
   handshakes looked at; and the flood's reconnections are mostly refused, which is cheap,
   rather than evicting each other, which is not: every connection waits in the same listen
   queue, and the cost of the churn ahead of it is what a legitimate client feels.
3. **Per-address caps**: a group may hold `max_connections_per_ip` connections (handshakes
   and members) and `max_handshakes_per_ip` handshakes; a newcomer past either is refused
   (0 turns a cap off, e.g. behind a reverse proxy, where every client has the proxy's
   address).
4. **Wrong keys are rate-limited per group** by a token bucket (`wrong_key_rate` per second,
   `wrong_key_burst` at once): each wrong key spends a token, and while a group's bucket holds
   less than one, its new connections are closed at once, before anything is read.
5. **Under pressure the pre-auth deadline shrinks**: while at least half of `max_handshakes`
   are in use, every handshake (those already waiting included) must be done within
   `pressure_auth_timeout` of connecting, or it is closed without a word. The deadlines are
   spread over the second half of that time, so a flood admitted at once does not time out,
   and come back, at once.
6. **Bounded memory**: a group's entry exists while it has connections; a wrong-key bucket is
   kept until it is full again (checked oldest first at each admission) and at most
   `MAX_REMEMBERED_GROUPS` of them are kept (past that the oldest is forgotten). Each operation
   is O(1), except entering pressure, which walks the handshakes once.
7. **Bounded logs**: refusals, evictions and failed handshakes are not logged one by one
   (a flood would write a line per attempt) but counted, and `serve_reports` writes one
   summary line per `log_interval` in which anything happened.

A refused connection is closed at once by the caller. An evicted handshake, or one past its
pressure deadline, is cancelled through `Ticket.scope`, the cancel scope the connection
handler runs the transport in; a promotion lifts that scope's deadline for good.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from types import TracebackType

import trio

from papaya_trio.bucket import TokenBucket

logger = logging.getLogger(__name__)

PRESSURE_SHARE = 0.5  # share of max_handshakes in use from which the pressure deadline holds
GOLDEN_RATIO = (1 + 5**0.5) / 2
MAX_REMEMBERED_GROUPS = 65536  # wrong-key buckets, and recent evictions, kept at most (each)
VICTIM_SCAN = 32  # groups evicted lately looked at for the next victim (bounds the work)
REPORTED_GROUPS = 1024  # groups counted per report interval (the busiest one is named)


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The admission limits (see the module docstring for what each one does)."""

    max_connections: int = 1024
    max_handshakes: int = 1024
    max_connections_per_ip: int = 64
    max_handshakes_per_ip: int = 8
    pressure_auth_timeout: float = 2.0
    wrong_key_rate: float = 1.0
    wrong_key_burst: int = 10
    log_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """What admission control holds right now."""

    members: int
    handshakes: int
    groups: int
    wrong_key_groups: int
    under_pressure: bool


def address_group(address: object) -> str | None:
    """The group a peer address counts in: an IPv4 address, or an IPv6 address's /64 (an
    IPv4-mapped IPv6 address counts as its IPv4 address); None if it is not an IP address."""
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None
    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class State(enum.Enum):
    """Where a ticket is in its life."""

    HANDSHAKE = "handshake"
    MEMBER = "member"
    GONE = "gone"  # evicted, or released


@dataclass(slots=True, eq=False)
class _Group:
    """One address group's connections."""

    key: str
    addressed: bool  # False: an unknown address, a group of its own
    connections: int = 0
    handshakes: dict[Ticket, None] = field(default_factory=dict)  # oldest first


class Ticket:
    """One connection's place: a handshake, then perhaps a member, until released.

    Use it as a context manager around the connection's whole life; run the transport inside
    `scope`, which admission control cancels to evict the handshake or to end it at the
    pressure deadline.
    """

    def __init__(self, admission: Admission, group: _Group, connected_at: float) -> None:
        self._admission = admission
        self.group = group
        self.connected_at = connected_at
        self.state = State.HANDSHAKE
        self.evicted = False
        self.scope = trio.CancelScope()
        self._released = False

    def __repr__(self) -> str:
        return f"<Ticket {self.group.key} {self.state.name}>"

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def members_full(self) -> bool:
        """Whether a promotion would fail now (the server has `max_connections` members)."""
        return self._admission.members_full

    def promote(self) -> bool:
        """The key was right: become a member. False if the server is full, or the
        handshake was evicted meanwhile; the caller then refuses the client."""
        admission = self._admission
        if self.state is not State.HANDSHAKE or admission.members_full:
            return False
        admission.end_handshake(self)
        self.state = State.MEMBER
        admission.members += 1
        self.scope.deadline = math.inf
        return True

    def wrong_key(self) -> None:
        """The client presented a wrong key: spend a token of its group's bucket."""
        self._admission.charge_wrong_key(self.group)

    def note(self, outcome: str) -> None:
        """Count a failed or refused handshake for the next summary line."""
        self._admission.note(outcome, self.group)

    def release(self) -> None:
        """The connection is over: give back its places (idempotent)."""
        if self._released:
            return
        self._released = True
        admission = self._admission
        if self.state is State.HANDSHAKE:
            admission.end_handshake(self)
        elif self.state is State.MEMBER:
            admission.members -= 1
        self.state = State.GONE
        admission.leave(self)


class Admission:
    """Admission control for one server; `admit` at accept, then the ticket does the rest."""

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings if settings is not None else AdmissionSettings()
        self.members = 0
        self._handshakes: dict[Ticket, None] = {}  # every handshake, oldest first
        self._groups: dict[str, _Group] = {}
        # Groups by how many handshakes they hold; each inner dict is ordered by arrival.
        self._by_count: dict[int, dict[str, None]] = {}
        self._heaviest = 0
        self._pressed = False
        self._wrong_keys: OrderedDict[str, TokenBucket] = OrderedDict()  # last charged last
        self._evictions: OrderedDict[str, float] = OrderedDict()  # group -> when, oldest first
        self._anonymous = itertools.count(1)
        self._spread = itertools.count(1)
        self._outcomes: Counter[str] = Counter()
        self._counting_since = 0.0
        self._reported_groups: Counter[str] = Counter()
        self._news = trio.Event()

    @property
    def members_full(self) -> bool:
        """Whether the server has `max_connections` members."""
        return self.members >= self.settings.max_connections

    def statistics(self) -> AdmissionStatistics:
        """A snapshot of what admission control holds."""
        return AdmissionStatistics(
            members=self.members,
            handshakes=len(self._handshakes),
            groups=len(self._groups),
            wrong_key_groups=len(self._wrong_keys),
            under_pressure=self._pressed,
        )

    # --- admission ----------------------------------------------------------------------
    def admit(self, address: object) -> Ticket | None:
        """A ticket for a connection from `address` (a socket address tuple, or anything
        else for an unknown address), or None: close the connection at once."""
        settings = self.settings
        key = address_group(address)
        if key is None:
            # No address, no group to share: only the handshake budget applies.
            group = _Group(f"unknown #{next(self._anonymous)}", addressed=False)
        else:
            group = self._groups.get(key) or _Group(key, addressed=True)
            if refusal := self._refusal(group):
                self._count(refusal, key)
                return None
        if len(self._handshakes) >= settings.max_handshakes:
            held = len(group.handshakes)
            if (held and held + 1 >= self._heaviest) or self._evicted_lately(group):
                self._count("refused: handshake budget", key)
                return None
            self._evict_one()
        now = trio.current_time()
        ticket = Ticket(self, group, now)
        self._groups[group.key] = group
        group.connections += 1
        self._start_handshake(ticket)
        return ticket

    def _refusal(self, group: _Group) -> str | None:
        """Why a newcomer of `group` is refused by a per-address limit, or None."""
        settings = self.settings
        self._forget_paid_debts()
        debt = self._wrong_keys.get(group.key)
        if debt is not None and debt.tokens < 1:
            return "refused: wrong-key limit"
        cap = settings.max_connections_per_ip
        if cap and group.connections >= cap:
            return "refused: connections per address"
        cap = settings.max_handshakes_per_ip
        if cap and len(group.handshakes) >= cap:
            return "refused: handshakes per address"
        return None

    def _start_handshake(self, ticket: Ticket) -> None:
        group = ticket.group
        self._handshakes[ticket] = None
        self._move(group, len(group.handshakes), len(group.handshakes) + 1)
        group.handshakes[ticket] = None
        settings = self.settings
        if len(self._handshakes) >= PRESSURE_SHARE * settings.max_handshakes:
            if not self._pressed:
                self._pressed = True
                self._count("times under pressure", None)  # it may flap: no line each time
                for waiting in self._handshakes:
                    self._tighten(waiting)
            else:
                self._tighten(ticket)

    def _tighten(self, ticket: Ticket) -> None:
        # Spread the deadlines over the second half of pressure_auth_timeout: a flood admitted
        # in one burst would otherwise time out in one burst and reconnect in one burst, and a
        # member connecting then would wait behind all of it. The spread comes from a
        # low-discrepancy sequence (multiples of the golden ratio), not from randomness.
        share = 0.5 + 0.5 * (next(self._spread) * GOLDEN_RATIO % 1.0)
        deadline = ticket.connected_at + share * self.settings.pressure_auth_timeout
        ticket.scope.deadline = min(ticket.scope.deadline, deadline)

    def end_handshake(self, ticket: Ticket) -> None:
        """`ticket` is no longer a handshake (promoted, evicted or released)."""
        group = ticket.group
        del self._handshakes[ticket]
        del group.handshakes[ticket]
        self._move(group, len(group.handshakes) + 1, len(group.handshakes))
        if self._pressed and len(self._handshakes) < PRESSURE_SHARE * self.settings.max_handshakes:
            self._pressed = False

    def _move(self, group: _Group, old: int, new: int) -> None:
        """Keep `_by_count` and `_heaviest` right when a group's handshakes go old -> new."""
        if old:
            same = self._by_count[old]
            del same[group.key]
            if not same:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[group.key] = None
            self._heaviest = max(self._heaviest, new)
        while self._heaviest and self._heaviest not in self._by_count:
            self._heaviest -= 1

    def _evicted_lately(self, group: _Group) -> bool:
        """Whether a handshake of `group` was evicted within the last pressure_auth_timeout."""
        horizon = trio.current_time() - self.settings.pressure_auth_timeout
        while self._evictions:
            key, when = next(iter(self._evictions.items()))
            if when > horizon:
                break
            del self._evictions[key]
        return group.key in self._evictions

    def _evict_one(self) -> None:
        """Evict the oldest handshake of a group evicted lately (it is flooding), else of the
        group that reached the most handshakes first."""
        key = next(iter(self._by_count[self._heaviest]))
        for flooder in itertools.islice(self._evictions, VICTIM_SCAN):
            if (flooding := self._groups.get(flooder)) is not None and flooding.handshakes:
                key = flooder
                break
        group = self._groups[key]
        if group.addressed:
            self._evictions.pop(key, None)
            self._evictions[key] = trio.current_time()
            if len(self._evictions) > MAX_REMEMBERED_GROUPS:
                self._evictions.popitem(last=False)
        victim = next(iter(group.handshakes))
        self.end_handshake(victim)
        victim.state = State.GONE
        victim.evicted = True
        victim.scope.cancel()
        self._count("evicted", key if group.addressed else None)

    def leave(self, ticket: Ticket) -> None:
        """`ticket`'s connection is closed: give back its place in its group."""
        group = ticket.group
        group.connections -= 1
        if not group.connections:
            del self._groups[group.key]

    # --- wrong keys ---------------------------------------------------------------------
    def charge_wrong_key(self, group: _Group) -> None:
        """Count a wrong key, and spend a token of the group's wrong-key bucket."""
        self._count("wrong key", group.key if group.addressed else None)
        if not group.addressed:
            return
        bucket = self._wrong_keys.pop(group.key, None)
        if bucket is None:
            if len(self._wrong_keys) >= MAX_REMEMBERED_GROUPS:
                self._wrong_keys.popitem(last=False)
            settings = self.settings
            bucket = TokenBucket(settings.wrong_key_rate, settings.wrong_key_burst)
        bucket.charge()
        self._wrong_keys[group.key] = bucket

    def _forget_paid_debts(self) -> None:
        while self._wrong_keys:
            key, bucket = next(iter(self._wrong_keys.items()))
            if not bucket.full:
                return
            del self._wrong_keys[key]

    # --- the summary log ----------------------------------------------------------------
    def note(self, outcome: str, group: _Group) -> None:
        """Count one handshake that failed (`outcome` says how) for the next summary."""
        self._count(outcome, group.key if group.addressed else None)

    def _count(self, outcome: str, key: str | None) -> None:
        if not self._outcomes:
            self._counting_since = trio.current_time()
        self._outcomes[outcome] += 1
        if key is not None and (
            key in self._reported_groups or len(self._reported_groups) < REPORTED_GROUPS
        ):
            self._reported_groups[key] += 1
        self._news.set()

    def report(self) -> None:
        """Log what was counted since the last report as one line, and start counting anew."""
        if not self._outcomes:
            return
        outcomes = ", ".join(f"{count} {what}" for what, count in self._outcomes.most_common())
        seconds = trio.current_time() - self._counting_since
        line = f"failed or refused connections in the last {seconds:.0f}s: "
        line += outcomes
        if self._reported_groups:
            [(busiest, count)] = self._reported_groups.most_common(1)
            line += f"; from {len(self._reported_groups)} addresses, most from {busiest} ({count})"
        logger.warning("%s", line)
        self._outcomes.clear()
        self._reported_groups.clear()
        self._news = trio.Event()

    async def serve_reports(self) -> None:
        """Write a summary line `log_interval` after the first thing counted, forever.

        Sleeps on an event while nothing happens. The caller cancels it; a final `report()`
        then writes what was counted since the last line.
        """
        while True:
            await self._news.wait()
            await trio.sleep(self.settings.log_interval)
            self.report()
