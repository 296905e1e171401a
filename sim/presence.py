"""Presence and history paging, checked from the clients' side as docs/protocol.md states them.

Presence: "A client keeps its member list by starting from the welcome's `online` and applying
these [presence events]"; "Every join is matched by one leave". A `MemberList` is one
connection's list (name -> connection count, papayaChat connections under None). A leave for
a name the list does not hold, or a presence event before the welcome, breaks `presence`
at once. A join never matched by its leave shows once faults stop: `presence_converges` then
requires every healthy connected client's list to equal the connections that actually hold
each name in the world (as the clients know them, not as the server says), within a bound.

History paging: "`messages` are message objects, oldest first, the newest `limit` with
`seq < before`; `first` is the oldest stored sequence number" (`limit` past 200 counts as 200).
`check_page` holds each page to that and compares it record for record with the log as the
oracle's own reader (`sim.invariants.read_log`, through `World.logged`) finds it on the disk;
a pager that walks back until "`messages` is empty or `messages[0].seq == first`" must then
have reached the log's first record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import trio

from papaya_trio.records import Record
from sim.invariants import HISTORY_PAGES, PRESENCE
from sim.wire import record_from
from sim.world import WS_PING_INTERVAL, WS_PING_TIMEOUT, Client, World

HISTORY_LIMIT_CAP = 200  # docs/protocol.md: "more than 200 is taken as 200"
# Once every client has settled, member lists must agree with the world within this (a
# silent WebSocket client that left just before is dropped by the keepalive).
CONVERGE_BOUND = WS_PING_INTERVAL + WS_PING_TIMEOUT + 3.0


class MemberList:
    """One connection's member list, from its welcome's `online` and the presence events."""

    def __init__(self, who: str, fail: Callable[[str, str], None]) -> None:
        self._who = who
        self._fail = fail
        self.counts: Counter[str | None] | None = None  # None until the welcome (or fork mode)
        self.welcomed = False

    def welcome(self, online: object) -> None:
        """The welcome's `online` field (absent in fork mode: then nothing is tracked)."""
        self.welcomed = True
        if online is None:
            return
        if not isinstance(online, list):
            self._fail(PRESENCE, f"{self._who}: welcome online is {online!r}")
            return
        counts: Counter[str | None] = Counter()
        for entry in online:
            name, count = entry.get("user"), entry.get("count")
            if name in counts or not isinstance(count, int) or count < 1:
                self._fail(PRESENCE, f"{self._who}: bad online entry {entry!r} in {online!r}")
                return
            counts[name] = count
        self.counts = counts

    def event(self, obj: dict[str, object]) -> None:
        """One `presence` event."""
        if not self.welcomed:
            self._fail(PRESENCE, f"{self._who}: presence {obj} before the welcome")
            return
        if self.counts is None:
            return
        name, event = obj.get("user"), obj.get("event")
        assert name is None or isinstance(name, str)
        if event == "join":
            self.counts[name] += 1
        elif event == "leave" and self.counts[name] > 0:
            self.counts[name] -= 1
            if not self.counts[name]:
                del self.counts[name]
        else:
            self._fail(PRESENCE, f"{self._who}: {obj} without a join or online entry before it")


def _page_problem(
    records: Sequence[Record], before: int, limit: int, first: object, seen: int
) -> str | None:
    """What is wrong with a page, by its own rules and what the connection already saw
    (`seen`: its newest delivered seq, which was stored before the page was read)."""
    seqs = [r.seq for r in records]
    if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        return f"not consecutive: {seqs}"
    if seqs and seqs[-1] >= before:
        return f"seq {seqs[-1]} is not below before={before}"
    if len(seqs) > min(limit, HISTORY_LIMIT_CAP):
        return f"{len(seqs)} messages for limit {limit}"
    if not isinstance(first, int) or first not in (0, 1) or (seqs and first != 1):
        return f"first is {first!r} (the oracle's log starts at 1)"
    newest = min(before - 1, seen)  # stored before the page was read, so it must be there
    if newest >= 1 and (not seqs or seqs[-1] < newest):
        return f"newest is {seqs[-1] if seqs else 'none'}, but {newest} was stored and below"
    full = min(limit, HISTORY_LIMIT_CAP)
    if seqs and len(seqs) < full and seqs[0] != first:
        return f"{len(seqs)} of {full} messages, yet it stops at {seqs[0]}, not first={first}"
    return None


def check_page(
    world: World, who: str, request: tuple[int, int], reply: dict[str, object], seen: int
) -> bool:
    """Check one history reply for `request` (before, limit); False if the run failed."""
    before, limit = request
    if reply.get("before") != before:
        world.fail(HISTORY_PAGES, f"{who}: reply for before={reply.get('before')}, asked {before}")
        return False
    messages = reply.get("messages")
    assert isinstance(messages, list)
    records = [record_from(m) for m in messages]
    problem = _page_problem(records, before, limit, reply.get("first"), seen)
    if problem is None:
        logged = world.logged()
        for record in records:
            stored = logged[record.seq - 1] if record.seq <= len(logged) else None
            if stored != record:
                problem = f"got {record}, the log holds {stored}"
                break
    if problem is not None:
        world.fail(HISTORY_PAGES, f"{who}: history before={before} limit={limit}: {problem}")
        return False
    world.trace.record("page", who=who, before=before, limit=limit, got=len(records))
    return True


def expected_members(world: World) -> Counter[str | None]:
    """The names the world's connections hold now (as the clients know their connections)."""
    held: Counter[str | None] = Counter()
    for client in world.clients:
        held.update(client.holds())
    return held


async def presence_converges(
    world: World, expected_for: Callable[[Client], Counter[str | None]] | None = None
) -> None:
    """After settling: every healthy connected client's member list equals the world's (or,
    with `expected_for`, what it says that client must list)."""
    deadline = trio.current_time() + CONVERGE_BOUND
    while True:
        everyone = expected_members(world)
        wrong = [
            (client.user, counts, expected)
            for client in world.clients
            if client.settles and (counts := client.member_counts()) is not None
            if counts != (expected := everyone if expected_for is None else expected_for(client))
        ]
        if not wrong:
            world.trace.record("members", online=sum(everyone.values()))
            return
        if trio.current_time() >= deadline:
            user, counts, expected = wrong[0]
            world.fail(
                PRESENCE,
                f"{user} lists {dict(counts)}, but connected are {dict(expected)} "
                f"({CONVERGE_BOUND}s after settling)",
            )
            return
        await trio.sleep(0.1)
