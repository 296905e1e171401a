"""Scripted workloads: an explicit list of operations instead of random actors.

The Hypothesis variant of the simulation generates these lists, so a failure shrinks to the
shortest list of operations that still breaks an invariant. Clients stay connected by
themselves (reconnecting with `since` after each loss, resending what was not confirmed); the
script only decides who sends, who leaves and how, and when the server crashes or restarts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import trio

from sim.actors import LEAVE_STYLES, NativeClient, native_actor
from sim.world import World

OpKind = Literal["send", "leave", "crash", "restart", "pause"]
SCRIPT_CLIENTS = 3


@dataclass(frozen=True, slots=True)
class Op:
    """One step of a script: `client` picks a client, `arg` a leave style or a pause length."""

    kind: OpKind
    client: int = 0
    arg: int = 0


def ops_to_json(ops: list[Op]) -> str:
    """The script as JSON (for the regression corpus)."""
    return json.dumps([asdict(op) for op in ops])


def ops_from_json(text: str) -> list[Op]:
    """The script back from `ops_to_json`."""
    return [Op(**fields) for fields in json.loads(text)]


async def run_script(
    world: World, ops: list[Op], nursery: trio.Nursery, actors: trio.Nursery
) -> None:
    """Start the scripted clients in `actors`, then play `ops` one after the other."""
    clients = [NativeClient(world, f"s{n}", world.rng(f"s{n}")) for n in range(SCRIPT_CLIENTS)]
    for client in clients:
        actors.start_soon(native_actor, client, False)
    host = world.host
    for op in ops:
        world.trace.record("op", op=op.kind, client=op.client, arg=op.arg)
        client = clients[op.client % SCRIPT_CLIENTS]
        conn = client.conn
        connected = conn is not None and conn.welcomed.is_set() and not conn.ended.is_set()
        if op.kind == "send" and connected:
            await client.send_new()
        elif op.kind == "leave" and connected and conn is not None:
            await client.leave(conn, LEAVE_STYLES[op.arg % len(LEAVE_STYLES)])
        elif op.kind == "crash" and host.up:
            host.crash()
            await host.wait_stopped()
            await host.start(nursery)
        elif op.kind == "restart" and host.up:
            await host.shutdown()
            await host.start(nursery)
        await trio.sleep(0.01 + (op.arg % 20) / 10 if op.kind == "pause" else 0.01)
