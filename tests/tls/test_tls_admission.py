"""Admission control under TLS: the address is the socket's under the TLS stream, so the
per-address caps hold as in clear."""

from __future__ import annotations

from contextlib import suppress

import trio

from tests.flood import connect_from
from tests.memory_world import LineClient
from tests.real_server import ServerFactory
from tests.tls.conftest import Pki

STEP_TIMEOUT = 10.0
REFUSAL_TIMEOUT = 2.0


async def test_per_address_caps_hold_under_tls(trio_servers: ServerFactory, pki: Pki) -> None:
    server = trio_servers.start(*pki.server_args(), "--max-handshakes-per-ip", "1")
    silent = await connect_from("127.0.0.9", server.port)  # not even a TLS ClientHello
    refused = await connect_from("127.0.0.9", server.port)
    member = trio.SSLStream(
        await connect_from("127.0.0.10", server.port),
        pki.client_context(),
        server_hostname="127.0.0.1",
    )
    try:
        # At once, not at the handshake deadline (10 s): a reset is as good as an EOF.
        with trio.fail_after(REFUSAL_TIMEOUT), suppress(trio.BrokenResourceError):
            assert await refused.receive_some(1024) == b""
        with trio.fail_after(STEP_TIMEOUT):
            client = LineClient(member)
            await client.hello("alice", key=server.key)  # another address is not affected
    finally:
        for stream in (silent, refused, member):
            await trio.aclose_forcefully(stream)
