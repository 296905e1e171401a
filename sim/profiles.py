"""Named profiles: how many actors of each kind, which faults, and how often.

`flood` runs keyless flooders against a small handshake budget and a short idle timeout.

`shutdown` takes its fsync policy from the seed (always, interval, never in turn).

`partition` cuts clients off the server for a while, then heals (`sim.network`).

`swarm` is not one profile but a family: it draws from the seed which fault families are on
and at what rates, so a long run of seeds covers combinations nobody thought to write down.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from papaya_trio.chatlog import FsyncPolicy
from sim.disk import DiskFaults
from sim.network import NetworkFaults
from sim.simredis import Durability, SharedStore


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything about a run that is not the seed."""

    name: str
    duration: float = 30.0  # simulated seconds of traffic, then faults stop and clients settle
    chatters: int = 3
    lurkers: int = 1
    slow_readers: int = 0
    papaya_clients: int = 1
    garbage_senders: int = 0
    ws_clients: int = 0  # chatters over WebSocket
    ws_garbage_senders: int = 0
    send_every: float = 1.0  # mean seconds between one chatter's messages
    # Rushes: moments (about burst_every seconds apart; 0: none) when every native chatter
    # sends a burst of `burst_size` messages back to back, beyond its window of unconfirmed
    # ones (WebSocket chatters do not: `sim.wsclient.WsClient.rushes`).
    burst_every: float = 0.0
    burst_size: tuple[int, int] = (20, 40)
    reconnect_every: float = 0.0  # mean seconds a client stays connected (0: for good)
    crash_every: float = 0.0  # mean seconds between server crashes (0: never)
    shutdown_every: float = 0.0  # mean seconds between graceful restarts (0: never)
    commit_kills: float = 0.0  # share of crashes that wait for a group commit's worst moment
    # Mean seconds between jumps of the wall clock that stamps records (0: none); not with a
    # latency bound, which reads those stamps.
    clock_jump_every: float = 0.0
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval: float = 0.5
    network: NetworkFaults = field(default_factory=NetworkFaults)
    disk: DiskFaults = field(default_factory=DiskFaults)
    history: int = 20
    max_lag: int = 200
    cache_records: int = 32  # small, so replays go through the stored-record path
    max_message_bytes: int = 200
    shutdown_deadline: float = 2.0
    latency_bound: float | None = None  # healthy clients get live messages within this
    settle_bound: float = 30.0  # once faults stop, clients reach the head within this
    quiet_every: float = 6.0  # mean seconds between quiet windows (0: none)
    # Keyless connections that send `{`, a wrong key or nothing and reconnect when dropped.
    flooders: int = 0
    flood_groups: int = 0  # addresses the flooders share (0: no client has a known address)
    idlers: int = 0  # say hello, then nothing: the server must drop them (idle_timeout)
    keepalive: bool = False  # members ping whenever they do not send (a short idle_timeout)
    max_handshakes: int = 1024  # the server's admission settings
    pressure_auth_timeout: float = 2.0
    idle_timeout: float = 300.0  # the server's; papaya_trio.room.RoomSettings
    hosts: int = 1  # server processes in the world (more than one needs a shared store)
    shared_store: SharedStore | None = None  # None: each server's log file on the disk


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", duration=20.0, chatters=3, lurkers=1, papaya_clients=1, ws_clients=1),
    "churn": Profile(
        "churn",
        chatters=5,
        lurkers=2,
        papaya_clients=2,
        garbage_senders=1,
        ws_clients=2,
        ws_garbage_senders=1,
        send_every=0.5,
        reconnect_every=4.0,
        clock_jump_every=8.0,
        network=NetworkFaults(
            tiny_chunks=0.3, stall_every=5.0, reset_every=6.0, fd_exhaustion_every=8.0
        ),
    ),
    "slow-consumer": Profile(
        "slow-consumer",
        chatters=3,
        lurkers=2,
        slow_readers=2,
        papaya_clients=1,
        ws_clients=1,
        # Chatters send 5.9 messages a second and, in a rush (every 4 to 12 s), 20 to 40
        # back to back: 9.6 a second on average, under the server's rate_messages (10/s),
        # and each burst within rate_burst (50).
        send_every=0.17,
        burst_every=8.0,
        burst_size=(20, 40),
        max_lag=300,
        # Every link carries several times the offered load (about 7 KB/s): a lurker on a
        # slower link is a slow consumer by its link, and no server could meet the
        # latency bound for it (seeds 15 and 33 drew 5 KB/s links before this floor).
        network=NetworkFaults(
            bandwidth=(50_000.0, 5_000_000.0), capacity=(1024, 8192), tiny_chunks=0.0
        ),
        # A fast disk (an SSD's fsync, 0.1 to 1 ms), so a rush leaves the server as fast as
        # the chatters send it: with fsync = always a session stores one message per fsync,
        # and on the default disk (1 to 20 ms) that caps a burst at 50 to 90 messages a
        # second, which no link here falls behind. A rush puts prompt readers some tens of
        # messages behind for a moment (never near max_lag): a server that drops them at a
        # tenth of max_lag is caught (tests/sim/test_broken_components.py).
        disk=DiskFaults(write_latency=(0.0, 0.0005), sync_latency=(0.0001, 0.001)),
        latency_bound=3.0,
    ),
    "crash": Profile(
        "crash",
        chatters=4,
        lurkers=1,
        papaya_clients=1,
        ws_clients=2,
        send_every=0.3,
        reconnect_every=8.0,
        crash_every=6.0,
        commit_kills=0.5,
        disk=DiskFaults(write_failure=0.01, sync_failure=0.005),
    ),
    "shutdown": Profile(
        "shutdown",
        chatters=4,
        lurkers=1,
        slow_readers=1,
        papaya_clients=1,
        ws_clients=2,
        ws_garbage_senders=1,
        send_every=0.3,
        shutdown_every=7.0,
        network=NetworkFaults(stall_every=8.0, stall_for=(1.0, 5.0)),
    ),
    # Members sending twice the server's default rate_messages (10/s after a burst of 50):
    # after a few seconds the server slows their reads ("fakelag"). Nothing may be lost or
    # reordered, and everyone must still get live messages within the bound.
    "rate-limit": Profile(
        "rate-limit",
        duration=20.0,
        chatters=2,
        lurkers=1,
        papaya_clients=1,
        ws_clients=1,
        send_every=0.05,
        # As in slow-consumer: every link carries several times the offered load (about
        # 10 KB/s in the first seconds, while the chatters spend their bursts); a lurker on a
        # slower link could not meet the latency bound whatever the server did (seeds 404,
        # 408 and 419 drew 5.2 to 6.5 KB/s links before this floor).
        network=NetworkFaults(bandwidth=(50_000.0, 5_000_000.0)),
        latency_bound=3.0,
    ),
    # Keyless connections flood the handshake budget (16) while members chat, reconnect and
    # ping; members must still be welcomed within pressure_auth_timeout (+ a margin) and
    # never dropped, and a member that falls silent is dropped after idle_timeout.
    "flood": Profile(
        "flood",
        duration=20.0,
        chatters=3,
        lurkers=2,
        papaya_clients=1,
        reconnect_every=3.0,
        flooders=40,
        flood_groups=4,
        idlers=2,
        keepalive=True,
        max_handshakes=16,
        idle_timeout=4.0,
        network=NetworkFaults(backlog=128),
    ),
    # Three server hosts on one shared stream store: a simulated Redis (sim/simredis.py) under
    # the real RedisLog, with latency, outages, and crashes that may lose a tail; the store's
    # durability takes turns by seed (sim/sharedstore.py). Clients reconnect to any host.
    "shared-store": Profile(
        "shared-store",
        chatters=4,
        lurkers=2,
        papaya_clients=1,
        ws_clients=2,
        send_every=0.3,
        reconnect_every=6.0,
        crash_every=15.0,  # per host
        shutdown_every=20.0,  # per host
        hosts=3,
        network=NetworkFaults(stall_every=10.0, reset_every=8.0),
        shared_store=SharedStore(outage_every=12.0),
    ),
    # Partitions that heal: now and then some clients and the server, both alive, cannot
    # talk for up to 12 s (bytes in flight wait, connects go unanswered), then resume.
    # Members ping (a partition longer than idle_timeout ends their sessions, as one longer
    # than the WebSocket keepalive ends those); everyone else keeps the latency bound.
    "partition": Profile(
        "partition",
        chatters=4,
        lurkers=2,
        papaya_clients=1,
        ws_clients=2,
        send_every=0.3,
        keepalive=True,
        idle_timeout=8.0,
        latency_bound=3.0,
        network=NetworkFaults(partition_every=5.0, partition_for=(0.5, 12.0)),
    ),
    "script": Profile(
        "script",
        chatters=0,
        lurkers=0,
        papaya_clients=0,
        quiet_every=0.0,
        network=NetworkFaults(stall_every=4.0, stall_for=(0.1, 1.0)),
        disk=DiskFaults(write_failure=0.02, sync_failure=0.01),
    ),
}

# What `python -m sim --profile` offers; "script" only makes sense with a generated script.
NAMES = (*(name for name in PROFILES if name != "script"), "swarm")


def swarm(seed: int) -> Profile:
    """A profile whose fault families and rates are drawn from `seed`."""
    rng = random.Random(f"swarm:{seed}")

    def maybe(rate: float, low: float, high: float) -> float:
        return rng.uniform(low, high) if rng.random() < rate else 0.0

    crash_every = maybe(0.4, 3.0, 15.0)
    # Families added later draw from streams of their own: the draws above stay as they were.
    later = random.Random(f"swarm-partitions:{seed}")
    partition_every = later.uniform(3.0, 20.0) if later.random() < 0.3 else 0.0
    drawn = Profile(
        "swarm",
        duration=rng.uniform(10.0, 40.0),
        chatters=rng.randint(1, 6),
        lurkers=rng.randint(0, 3),
        slow_readers=rng.randint(0, 2),
        papaya_clients=rng.randint(0, 2),
        garbage_senders=rng.randint(0, 1),
        ws_clients=rng.randint(0, 3),
        ws_garbage_senders=rng.randint(0, 1),
        send_every=rng.uniform(0.05, 2.0),
        reconnect_every=maybe(0.5, 1.0, 10.0),
        crash_every=crash_every,
        shutdown_every=maybe(0.3, 3.0, 15.0),
        clock_jump_every=maybe(0.3, 2.0, 20.0),
        fsync=rng.choice(list(FsyncPolicy)),
        network=NetworkFaults(
            latency=(0.0, rng.uniform(0.001, 0.2)),
            capacity=(rng.randint(256, 4096), rng.randint(4096, 65536)),
            tiny_chunks=rng.uniform(0.0, 0.5),
            stall_every=maybe(0.5, 1.0, 10.0),
            reset_every=maybe(0.5, 1.0, 10.0),
            fd_exhaustion_every=maybe(0.3, 2.0, 15.0),
        ),
        disk=DiskFaults(
            write_failure=maybe(0.3, 0.001, 0.05),
            sync_failure=maybe(0.3, 0.001, 0.02),
        ),
        history=rng.randint(0, 60),
        max_lag=rng.randint(20, 400),
        cache_records=rng.randint(8, 128),
    )
    return replace(drawn, network=replace(drawn.network, partition_every=partition_every))


def profile_for(name: str, seed: int) -> Profile:
    """The named profile (for `swarm`, the one drawn from `seed`)."""
    if name == "swarm":
        return swarm(seed)
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(NAMES)}") from None
    if profile.shared_store is not None:
        # The store's durability takes turns, with the server's matching fsync setting.
        durability = list(Durability)[seed % len(Durability)]
        fsync = FsyncPolicy.INTERVAL if durability is Durability.EVERYSEC else FsyncPolicy.ALWAYS
        store = replace(profile.shared_store, durability=durability)
        return replace(profile, fsync=fsync, shared_store=store)
    if name == "shutdown":
        # A graceful stop must sync what is written under every policy: seeds take turns.
        return replace(profile, fsync=list(FsyncPolicy)[seed % len(FsyncPolicy)])
    return profile
