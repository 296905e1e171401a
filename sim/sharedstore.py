"""Several server hosts sharing one stream store: the `shared-store` profile (issue 15).

Theory of operation
-------------------
`SharedWorld` is the simulated world with `profile.hosts` real servers (`StoreHost`), each on
its own pair of listeners, all on one real `RedisLog` store apiece, every one of them talking
to the same `SimRedis` (`sim/simredis.py`: latency, outages, a restart or failover that may
lose a tail). Clients are the ordinary actors, unchanged: `ClusterNetwork` plays the load
balancer, sending each new connection to a random host that is listening, so a client whose
host died reconnects (with `since`) to another one.

The oracle is the ordinary one; what changes is what "the log" is. It is the stream in the
store, read by this module's own reader of docs/redis-store.md's layout (`read_stream`), not by
the store's code. An epoch of the oracle is a life of the store's data, not of a server: a
host crash or restart loses nothing (the store keeps it), and only a store crash that lost
entries ends an epoch, with the oracle's usual check that nothing that had to survive was
lost. What had to survive depends on the store's durability, which takes turns by seed
(`sim.profiles.profile_for`):

- `aof-always` (`fsync = "always"`, Redis `appendfsync always`, restarts from its
  append-only file): everything shown or acknowledged survives.
- `replica-wait` (`fsync = "always"`, `redis_replicas = 1`, failovers to the replica):
  everything acknowledged survives; a message shown but not yet copied to the replica may be
  lost (a reader sees an entry before WAIT returns).
- `everysec` (`fsync = "interval"`, `appendfsync everysec`, failovers or restarts): nothing
  is promised across a store crash but order and no duplicates. A host that had seen lost
  numbers refuses appends (PAPAYA_LOST); the simulated operator restarts it, as docs say.

Order, no duplicates, `since` resume, history (papayaChat tails and paging) and the final
agreement of everything confirmed with the store hold across hosts unchanged. Liveness: in a
quiet window every healthy client must reach the store's head unless the store had an outage
within `CALM_AFTER` (a reader's backoff, a closing handshake after a fatal storage_failed);
once faults stop every host's head must be the store's last entry and every client must have
it. Presence is per host: each host's room knows only its own connections, so a client's
member list must equal the connections held on its own host (several servers serve one room,
but presence is not shared between them).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from typing import TYPE_CHECKING

import trio

from papaya_trio.logstore import LogStore
from papaya_trio.records import Record
from papaya_trio.redislog import DEDUPE_ENTRIES, REDIS_ERRORS, RETRY_MAX
from sim.instrument import TaskCounter
from sim.invariants import HISTORY, LIVENESS, Oracle, marked_record
from sim.network import HTTP_PORT, TCP_PORT, Link, SimNetwork
from sim.presence import presence_converges
from sim.profiles import Profile
from sim.runner import _quiet_windows, _start_actors, check_left
from sim.simredis import Durability, SimRedis, SimRedisClient
from sim.world import START_RETRY, Client, Components, ServerHost, World

if TYPE_CHECKING:
    from collections.abc import Callable

REDIS_KEY = "papaya"
STREAM = f"{REDIS_KEY}:log".encode()
STORE_TIMEOUT = 2.0  # redis_timeout: WAIT gets half of it
# After an outage, bounds apply again only once this has passed: the longest a check looks
# back (a silent WebSocket client's 8 s) plus what an outage may still cause meanwhile: a
# fatal storage_failed whose closing handshake waits up to 5 s (handshake_timeout), a reader
# in its backoff (up to RETRY_MAX).
CALM_AFTER = 8.0 + max(5.0, RETRY_MAX) + 1.0
OPERATOR_DELAY = (0.5, 2.0)  # seconds before the operator restarts a host refusing appends


def read_stream(entries: list[tuple[tuple[int, int], list[bytes]]]) -> list[Record]:
    """The messages in a stream, read as docs/redis-store.md lays them out (entry id
    `<seq>-0`, fields `t`, `user`, `text`, optional `id`, and `m`: the marks as JSON with `a`,
    `d`, `v` as in docs/log-format.md), without client ids (as clients see them). Reading
    stops at the first entry that is not the next message."""
    records: list[Record] = []
    for (seq, sub), flat in entries:
        fields = dict(zip(flat[0::2], flat[1::2], strict=False))
        try:
            t, user, text = int(fields[b"t"]), fields[b"user"].decode(), fields[b"text"].decode()
            marks = json.loads(fields[b"m"]) if fields.get(b"m") else {}
        except (KeyError, ValueError):
            break
        if sub != 0 or seq != len(records) + 1 or not isinstance(marks, dict):
            break
        records.append(marked_record(seq, t, user, text, marks))
    return records


def link_of(client: Client) -> Link | None:
    """The link of a client's current connection (native and WebSocket clients keep it in
    `conn`, papayaChat ones in `link`)."""
    conn = getattr(client, "conn", None)
    link = conn.link if conn is not None else getattr(client, "link", None)
    return link if isinstance(link, Link) else None


class ClusterNetwork(SimNetwork):
    """The simulated network with a load balancer: a connection goes to a random host that
    is listening on that port (`<port>@<host>`); `reset_host` is that host's death."""

    def __init__(self, world: World, hosts: int, pick: random.Random) -> None:
        faults = world.profile.network
        super().__init__(world.rng("network"), faults, world.trace, world.address_of)
        self._hosts = hosts
        self._pick = pick
        self.host_of: dict[int, int] = {}  # link number -> host index

    async def connect(self, who: str, port: str = TCP_PORT) -> Link:
        listening = [i for i in range(self._hosts) if f"{port}@{i}" in self._listeners]
        host = self._pick.choice(listening) if listening else 0
        link = await super().connect(who, f"{port}@{host}")
        self.host_of[link.number] = host
        return link

    def reset_host(self, host: int) -> None:
        """Host `host` died: its connections are reset (the others are untouched)."""
        for link in self.live_links():
            if self.host_of.get(link.number) == host:
                link.reset()


class StoreHost(ServerHost):
    """One server process on the shared store: the real server over a real `RedisLog`."""

    def __init__(self, world: SharedWorld, components: Components, index: int) -> None:
        super().__init__(world, components)
        self._shared = world
        self.index = index
        self.ports = (f"{TCP_PORT}@{index}", f"{HTTP_PORT}@{index}")

    async def _open(self) -> LogStore:
        """Connect to the store and read its tail; retried while the store is unreachable
        (a supervisor would start the process again)."""
        world, profile = self._shared, self._shared.profile
        store = world.store
        for attempt in range(10_000):  # bounded; each failed attempt takes simulated time
            rng = world.rng(f"redis client {self.index}:{self.lives}:{attempt}")
            log = self._components.store_class(
                SimRedisClient(store, rng, STORE_TIMEOUT),  # type: ignore[arg-type]
                REDIS_KEY,
                clock_ms=world.wall_clock_ms,
                fsync=profile.fsync,
                replicas=1 if store.durability is Durability.REPLICA_WAIT else 0,
                timeout=STORE_TIMEOUT,
                cache_records=profile.cache_records,
                dedupe_entries=DEDUPE_ENTRIES,
            )
            try:
                # What open_redis_log does once it has a client (it makes a coredis one).
                await log._load()
            except REDIS_ERRORS as exc:
                world.trace.record("start_failed", host=self.index, error=str(exc))
                await trio.sleep(START_RETRY)
                continue
            world.trace.record("start", host=self.index, head=log.head)
            return log
        raise AssertionError("the store never answered")  # pragma: no cover

    def _background(self, log: LogStore, nursery: trio.Nursery) -> None:
        """The store's stream reader."""
        nursery.start_soon(log.run)

    def crash(self) -> None:
        """The host dies: its connections are reset and its tasks cancelled (the store keeps
        everything it had confirmed)."""
        assert self._scope is not None, "no server to crash"
        self._shared.cluster.reset_host(self.index)
        self._scope.cancel()
        self.room = None

    async def shutdown(self) -> None:
        """The real graceful shutdown (its own clients are owed the notice)."""
        await self._graceful(self._shared.clients_on(self.index))
        self.room = None


class Cluster:
    """What actors read as `world.host`: the store's head, and whether the store has been
    calm long enough that liveness bounds apply."""

    def __init__(self, world: SharedWorld) -> None:
        self._world = world

    @property
    def head(self) -> int:
        """The store's last message: what every host, and so every client, must reach."""
        return len(self._world.logged())

    @property
    def up(self) -> bool:
        """The store is reachable and every reader has had time to retry since its outage."""
        store = self._world.store
        return store.reachable and trio.current_time() - store.calm_since >= CALM_AFTER

    @property
    def lives(self) -> int:
        """Server lives started, over all hosts."""
        return sum(host.lives for host in self._world.hosts)


class SharedWorld(World):
    """The world with `profile.hosts` servers on one shared stream store."""

    # An append waits for the store up to its timeout (WAIT for a replica that is not there
    # takes half of it each time), and a session reads its client's next frame only after.
    append_bound = STORE_TIMEOUT

    def __init__(
        self,
        seed: int,
        profile: Profile,
        components: Components,
        clock: trio.abc.Clock,
        counter: TaskCounter,
        cancel_run: Callable[[], None],
    ) -> None:
        super().__init__(seed, profile, components, clock, counter, cancel_run)
        shared = profile.shared_store
        assert shared is not None and profile.hosts >= 1
        self.store = SimRedis(self.rng("store"), shared, self.trace)
        self.store.on_loss = self._store_lost
        self.cluster = ClusterNetwork(self, profile.hosts, self.rng("balancer"))
        self.network = self.cluster
        durable_after = None if shared.durability is Durability.EVERYSEC else 0.0
        shown = shared.durability is Durability.AOF_ALWAYS
        self.oracle = Oracle(
            self.trace, self.fail, profile.history, durable_after, shown_durable=shown
        )
        self.hosts = [StoreHost(self, components, i) for i in range(profile.hosts)]
        self.host = Cluster(self)  # type: ignore[assignment]
        self._read: tuple[tuple[int, int], list[Record]] = ((-1, -1), [])

    def logged(self) -> list[Record]:
        """The messages in the store's stream (cached until it changes)."""
        version = (self.store.generation, len(self.store.journal))
        if self._read[0] != version:
            self._read = (version, read_stream(self.store.entries(STREAM)))
        return self._read[1]

    def clients_on(self, host: int) -> list[Client]:
        """The clients whose current connection is to `host`."""
        host_of = self.cluster.host_of
        return [
            c for c in self.clients if (link := link_of(c)) and host_of.get(link.number) == host
        ]

    def _store_lost(self, before: dict[bytes, list[tuple[tuple[int, int], list[bytes]]]]) -> None:
        """A store crash lost entries: the oracle's epoch ends with what the stream held and
        begins with what survived (checking that nothing that had to survive was lost)."""
        self.oracle.power_cut(False)
        self.oracle.end_epoch_records(read_stream(before.get(STREAM, [])))
        self.oracle.begin_epoch(self.logged())
        # A host that had learned a lost entry finds out itself (its reader checks its head's
        # entry after the outage) and refuses until the operator restarts it; but a message
        # read before the loss may reach its client after it, which the oracle would count
        # against the new epoch. So by default every host restarts at once, as the file
        # store's power cut does (restart_hosts_on_loss=False leaves them running).
        for host in self.hosts if self.store.faults.restart_hosts_on_loss else []:
            if host.up:
                self.trace.record("crash", host=host.index, why="store lost entries")
                host.crash()


# --- the director -----------------------------------------------------------------------------
async def direct(world: SharedWorld) -> None:
    """The shared-store run: hosts and actors, host and store faults, settling, leaving."""
    profile = world.profile
    world.oracle.begin_epoch([])
    async with trio.open_nursery() as nursery:
        for host in world.hosts:
            await host.start(nursery)
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as chaos:
                chaos.start_soon(world.network.run_faults)
                chaos.start_soon(world.store.run_faults, lambda: world.quiet > 0)
                for host in world.hosts:
                    chaos.start_soon(_host_faults, world, host, nursery)
                chaos.start_soon(_quiet_windows, world)
                _start_actors(world, actors)
                await trio.sleep(profile.duration)
                chaos.cancel_scope.cancel()
            await _settle(world, nursery)
            world.finishing.set()
        await _check_left(world)
        for host in world.hosts:
            await host.shutdown()
        final = world.logged()
        world.oracle.end_epoch_records(final)
        if (problem := world.oracle.unconfirmed_in(final)) is not None:
            world.fail(HISTORY, problem)
        nursery.cancel_scope.cancel()


def _broken(host: StoreHost) -> bool:
    return host.room is not None and host.room.log.broken is not None


async def _host_faults(world: SharedWorld, host: StoreHost, nursery: trio.Nursery) -> None:
    """Crash or gracefully restart one host at the profile's rates; and, as an operator
    would, restart it when its log refuses appends (after a store lost entries it had seen)."""
    profile, rng = world.profile, world.rng(f"host faults {host.index}")
    rates = [1.0 / every for every in (profile.crash_every, profile.shutdown_every) if every]
    crashes = bool(profile.crash_every)
    while True:
        due = trio.current_time() + (rng.expovariate(sum(rates)) if rates else math.inf)
        # Polled in simulated time: the store offers no event for "refuses appends".
        while trio.current_time() < due and host.up and not _broken(host):  # noqa: ASYNC110
            await trio.sleep(min(0.25, due - trio.current_time()))
        with trio.CancelScope(shield=True):
            if not host.up:
                await host.wait_stopped()  # crashed with the store's loss
            elif _broken(host):
                await trio.sleep(rng.uniform(*OPERATOR_DELAY))
                world.trace.record("operator_restart", host=host.index)
                await host.shutdown()
            elif rng.random() * sum(rates) < (1.0 / profile.crash_every if crashes else 0.0):
                world.trace.record("crash", host=host.index)
                host.crash()
                await host.wait_stopped()
            else:
                await host.shutdown()
            await trio.sleep(rng.uniform(0.0, 3.0))
            await host.start(nursery)


async def _settle(world: SharedWorld, nursery: trio.Nursery) -> None:
    """Faults stop; every host must reach the store's last entry, and every client too."""
    world.network.heal()
    world.store.heal()
    for host in world.hosts:
        if host.up and _broken(host):
            await host.shutdown()  # a log that refused appends needs a restart
        if not host.up:
            await host.start(nursery)
    world.settling.set()
    world.trace.record("settling", head=world.host.head)
    clients = [c for c in world.clients if c.settles]
    deadline = trio.current_time() + world.profile.settle_bound
    while trio.current_time() < deadline:
        head = world.host.head
        if all(h.head == head for h in world.hosts) and all(c.settled() for c in clients):
            world.trace.record("settled", head=head)
            await presence_converges(world, world_members_on_host(world))
            return
        await trio.sleep(0.1)
    behind = [c.user for c in clients if not c.settled()]
    heads = [h.head for h in world.hosts]
    world.fail(
        LIVENESS,
        f"the store holds {world.host.head}, the hosts' heads are {heads}; not there after "
        f"the bound: {', '.join(behind)}",
    )


def world_members_on_host(world: SharedWorld) -> Callable[[Client], Counter[str | None]]:
    """Presence is per host: a client's member list must hold the connections on its host."""

    def expected(client: Client) -> Counter[str | None]:
        link = link_of(client)
        host = world.cluster.host_of.get(link.number) if link is not None else None
        held: Counter[str | None] = Counter()
        for other in world.clients_on(host) if host is not None else []:
            held.update(other.holds())
        return held

    return expected


async def _check_left(world: SharedWorld) -> None:
    """Every client has left; every host must end all their sessions and tasks."""
    servers = [host.server for host in world.hosts if host.server is not None]
    await check_left(world, servers)
