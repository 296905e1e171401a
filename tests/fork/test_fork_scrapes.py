"""The fork parent's metrics listener (`fork.scrapes`) against hostile scrapers, on real
loopback sockets, driven by hand with explicit `now` values (no sleeping)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from papaya_trio.fork.scrapes import FORK_METRICS, MAX_SCRAPES, SCRAPE_TIMEOUT, Scrapes
from papaya_trio.metrics import Metrics
from tests.metrics_scrape import parse, value

WAIT = 5.0


CLIENTS: list[socket.socket] = []


@pytest.fixture
def scrapes() -> Iterator[Scrapes]:
    listener = socket.create_server(("127.0.0.1", 0))
    served = Scrapes([listener], Metrics(only=FORK_METRICS))
    served.metrics.log_messages.set(7)
    yield served
    served.close_all()
    while CLIENTS:
        CLIENTS.pop().close()


def connect(scrapes: Scrapes) -> socket.socket:
    client = socket.create_connection(scrapes.listeners[0].getsockname()[:2], timeout=WAIT)
    CLIENTS.append(client)
    return client


def answer(client: socket.socket) -> bytes:
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def test_a_scrape_gets_the_parents_figures_only(scrapes: Scrapes) -> None:
    client = connect(scrapes)
    scrapes.handle({scrapes.listeners[0].fileno()}, now=0.0)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    scrapes.handle(set(scrapes.fds()), now=0.0)
    head, _, body = answer(client).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    samples = parse(body.decode())
    assert value(samples, "papaya_log_messages") == 7.0
    assert {name for name, _ in samples} <= FORK_METRICS
    assert value(samples, "papaya_messages_stored_total") is None


def test_over_max_scrapes_newcomers_are_closed_and_silent_ones_time_out(
    scrapes: Scrapes,
) -> None:
    clients = [connect(scrapes) for _ in range(MAX_SCRAPES + 1)]
    scrapes.handle({scrapes.listeners[0].fileno()}, now=0.0)
    assert len(scrapes.fds()) == 1 + MAX_SCRAPES
    assert answer(clients[-1]) == b""  # closed at once, nothing read or sent
    assert scrapes.timeout(now=1.0) == SCRAPE_TIMEOUT - 1.0
    scrapes.handle(set(), now=SCRAPE_TIMEOUT)
    assert scrapes.fds() == [scrapes.listeners[0].fileno()]
    assert all(answer(client) == b"" for client in clients[:-1])


def test_an_oversized_request_head_gets_431(scrapes: Scrapes) -> None:
    client = connect(scrapes)
    scrapes.handle({scrapes.listeners[0].fileno()}, now=0.0)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000)
    for _ in range(10):  # a few reads of at most 16 KiB each
        if len(scrapes.fds()) == 1:
            break
        scrapes.handle(set(scrapes.fds()), now=0.0)
    assert answer(client).startswith(b"HTTP/1.1 431 ")


def test_a_scraper_that_closes_early_is_dropped(scrapes: Scrapes) -> None:
    client = connect(scrapes)
    scrapes.handle({scrapes.listeners[0].fileno()}, now=0.0)
    client.sendall(b"GET /met")
    client.close()
    scrapes.handle(set(scrapes.fds()), now=0.0)
    scrapes.handle(set(scrapes.fds()), now=0.0)
    assert scrapes.fds() == [scrapes.listeners[0].fileno()]
