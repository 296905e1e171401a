"""Seeded entropy for the simulated WebSocket clients: the one place that patches wsproto.

The simulated WebSocket clients use trio-websocket's client, which builds on wsproto. wsproto
draws two things from `os.urandom`, which no seed reaches: the opening handshake's
`Sec-WebSocket-Key` (`wsproto.utilities.generate_nonce`, imported by name into
`wsproto.handshake`) and the masking key of every frame a client sends (`os.urandom(4)` in
`wsproto.frame_protocol`). Both have a fixed length, so the trace (which records no bytes)
would not change, but the bytes on the simulated wire would, and a replay must be the same run
byte for byte. Within `seeded_websocket_entropy` both come from a `random.Random` seeded from
the run's seed. Only those two module attributes are replaced (never `os.urandom` itself), and
they are restored afterwards; `check()` proves the patch still covers everything wsproto
draws.

trio-websocket itself draws randomness in one place, `WebSocketConnection.ping()` without a
payload (`random.getrandbits`); nothing in the simulation pings that way (the server's
keepalive numbers its pings, the clients never ping). Its connection ids come from a
process-wide counter and only appear in its own debug log lines, which the trace leaves out.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace
from unittest import mock

import wsproto.frame_protocol
import wsproto.handshake
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request


@contextmanager
def seeded_websocket_entropy(rng: random.Random) -> Iterator[None]:
    """Within the block, wsproto's nonces and masking keys come from `rng`."""

    def nonce() -> bytes:
        return base64.b64encode(rng.randbytes(16))

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(wsproto.handshake, "generate_nonce", nonce))
        seeded_os = SimpleNamespace(urandom=rng.randbytes)
        patches.enter_context(mock.patch.object(wsproto.frame_protocol, "os", seeded_os))
        yield


def _client_bytes(seed: int) -> bytes:
    """What a wsproto client writes for an opening request and one masked frame."""
    with seeded_websocket_entropy(random.Random(seed)):
        request = WSConnection(ConnectionType.CLIENT).send(Request(host="sim", target="/ws"))
        frame = wsproto.frame_protocol.FrameProtocol(client=True, extensions=[]).send_data("x")
    return request + frame


def check() -> None:
    """Raise AssertionError unless equal seeds give equal client bytes and different seeds
    different ones (a wsproto that draws entropy elsewhere fails here)."""
    assert _client_bytes(1) == _client_bytes(1), "wsproto draws entropy the patch misses"
    assert _client_bytes(1) != _client_bytes(2), "the seed does not reach wsproto"
