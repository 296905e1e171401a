"""Reading Prometheus metrics in tests, with prometheus_client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

import trio
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT = 10.0
SETTLE_TIMEOUT = 15.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None if it is not exported."""
    return samples.get((name, frozenset(labels.items())))


def fetch(url: str) -> tuple[int, str, str]:
    """GET `url`: (status, content type, body), 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def scrape(url: str) -> Samples:
    """The metrics at `url`, parsed (the GET runs in a thread)."""
    status, _, body = await trio.to_thread.run_sync(fetch, url)
    assert status == 200, (status, body)
    return parse(body)


async def settled(
    url: str, expected: dict[tuple[str, frozenset[tuple[str, str]]], float]
) -> Samples:
    """Scrape until every expected sample has its value (the server counts a write just after
    the client got it), within a generous deadline; return the last scrape."""
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            samples = await scrape(url)
            if all(samples.get(key) == want for key, want in expected.items()):
                return samples
            await trio.sleep(0.05)
    return await scrape(url)


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    """Everything `stream` receives until the other side closes."""
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


class CountingStream(trio.abc.HalfCloseableStream):
    """A client's side of a connection, counting the bytes it sends and receives."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.sent = 0
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)
        self.sent += len(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
