"""Prometheus metrics: one registry per server, fed by one-line hooks in the server's code.

Theory of operation
-------------------
`Metrics` owns a `prometheus_client.CollectorRegistry` of its own (never the library's global
one), so every server, and every test's server, counts alone. The room carries it
(`Room.metrics`) and the code that sees an event tells it in one line: the transports count
sessions by transport and dialect and refused handshakes by reason, the session counts what it
stores and delivers and lag evictions, the accept loop wraps each stream in `MeteredStream` to
count bytes, and the service wraps the log file's storage in `MeteredStorage` to time fsyncs
and track the file's size. Gauges that are a value the server already keeps (the log's head,
the open connections, the largest send backlog) are read when scraped (`set_function`), so
they cannot drift and cost nothing per message.

Durations are measured on trio's clock, not `time.perf_counter`: in production trio's clock
is the monotonic clock, and under `MockClock` (tests, the simulation) a simulated disk's delay
is simulated time, so the histograms see exactly what the simulated world did.

The text exposition is `prometheus_client`'s (`exposition`), served as `/metrics` on the HTTP
port or on a listener of its own (`metrics` option; see README "Metrics"). Nothing here
touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from papaya_trio.broadcaster import Broadcaster
from papaya_trio.fanout import DirectWriter, direct_writer, uncounted
from papaya_trio.logstore import AppendResult, LogStore, StorageFailed
from papaya_trio.records import Record
from papaya_trio.storage import Storage

METRICS_PATH = "/metrics"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Every metric of one server, in a registry of its own; `only` limits the exposition to
    those sample names (fork mode exports what its parent knows)."""

    def __init__(self, only: frozenset[str] | None = None) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._exported = registry if only is None else registry.restricted_registry(only)
        self.sessions = Gauge(
            "papaya_connections",
            "Authenticated clients connected now",
            ["transport", "dialect"],
            registry=registry,
        )
        self.open_connections = Gauge(
            "papaya_open_connections",
            "Accepted connections open now, handshakes and page loads included",
            registry=registry,
        )
        self.refused = Counter(
            "papaya_handshakes_refused",
            "Connections turned away before or during authentication",
            ["reason"],
            registry=registry,
        )
        self.stored = Counter(
            "papaya_messages_stored", "Messages stored in the log", registry=registry
        )
        self.resent = Counter(
            "papaya_messages_resent",
            "Resends of a stored message (same user and id), acknowledged but not stored again",
            registry=registry,
        )
        self.append_failures = Counter(
            "papaya_append_failures",
            "Messages that could not be stored (the sender got storage_failed)",
            registry=registry,
        )
        self.deliveries = Counter(
            "papaya_deliveries",
            "Messages written to clients: history (replayed on connect) or live",
            ["kind"],
            registry=registry,
        )
        self.direct_deliveries = Counter(
            "papaya_direct_deliveries",
            "Live messages the broadcaster wrote to idle clients itself (the fan-out fast"
            " path); also counted in papaya_deliveries",
            registry=registry,
        )
        self.bytes_received = Counter(
            "papaya_received_bytes",
            "Bytes read from clients (after TLS), by listening port",
            ["port"],
            registry=registry,
        )
        self.bytes_sent = Counter(
            "papaya_sent_bytes",
            "Bytes written to clients (before TLS), by listening port",
            ["port"],
            registry=registry,
        )
        self.append_seconds = Histogram(
            "papaya_append_seconds",
            "Time to store a message until it may be acknowledged (write and, with"
            " fsync = always, its fsync)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "papaya_fsync_seconds",
            "Time of one fsync of the log file (file store only)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag_evictions = Counter(
            "papaya_lag_evictions",
            "Clients dropped for falling more than max_lag messages behind",
            registry=registry,
        )
        self.send_backlog = Gauge(
            "papaya_send_backlog_messages",
            "Live messages the furthest-behind client has yet to be sent (max_lag drops it)",
            registry=registry,
        )
        self.log_messages = Gauge(
            "papaya_log_messages",
            "Messages in the log (its newest sequence number)",
            registry=registry,
        )
        # Looked up once: a label lookup costs as much as the increment, on every write.
        self._history = self.deliveries.labels("history")
        self._live = self.deliveries.labels("live")
        for reason_free in (
            self.stored,
            self.resent,
            self.append_failures,
            self.lag_evictions,
            self.direct_deliveries,
        ):
            reason_free.inc(0)  # exported as 0 from the start, so rate() sees the first one

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus's text format, and its content type."""
        return generate_latest(self._exported), CONTENT_TYPE_LATEST

    # --- hooks: one line at each call site ------------------------------------------------
    def watch(
        self, log: LogStore, broadcaster: Broadcaster, open_connections: Callable[[], int]
    ) -> None:
        """Read the log's head, the largest send backlog and the server's connection count
        when scraped (nothing on the message path)."""
        self.log_messages.set_function(lambda: log.head)
        self.send_backlog.set_function(lambda: broadcaster.largest_lag(log.head))
        self.open_connections.set_function(open_connections)

    @contextmanager
    def connected(self, transport: str, dialect: str) -> Iterator[None]:
        """Count one authenticated client for the duration of the `with` block."""
        gauge = self.sessions.labels(transport, dialect)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def refuse(self, reason: str) -> None:
        """A handshake was refused; `reason` is a short, fixed word (never client input)."""
        self.refused.labels(reason).inc()

    async def append(
        self,
        log: LogStore,
        user: str,
        text: str,
        client_id: str | None,
        *,
        action: bool = False,
        dialect: str | None = None,
        verified: bool = False,
    ) -> AppendResult:
        """`log.append`, timed and counted (StorageFailed is counted and re-raised)."""
        started = trio.current_time()
        try:
            result = await log.append(
                user, text, client_id, action=action, dialect=dialect, verified=verified
            )
        except StorageFailed:
            self.append_failures.inc()
            raise
        self.append_seconds.observe(trio.current_time() - started)
        (self.resent if result.duplicate else self.stored).inc()
        return result

    def delivered(self, batch: Sequence[Record], replayed_up_to: int) -> None:
        """A send task wrote `batch`; records up to `replayed_up_to` were history."""
        history = sum(1 for record in batch if record.seq <= replayed_up_to)
        if history:
            self._history.inc(history)
        if len(batch) > history:
            self._live.inc(len(batch) - history)

    def delivered_live(self, count: int) -> None:
        """A send task finished writing `count` live records the broadcaster had begun."""
        self._live.inc(count)

    def delivered_direct(self, count: int) -> None:
        """The broadcaster wrote `count` live records in full to idle clients (fast path)."""
        self._live.inc(count)
        self.direct_deliveries.inc(count)

    def evicted_for_lag(self) -> None:
        """A client fell more than max_lag behind and is being dropped."""
        self.lag_evictions.inc()

    def count_bytes(self, stream: trio.abc.Stream, port: str) -> trio.abc.Stream:
        """`stream`, counting its bytes under `port` (half-closeable if `stream` is)."""
        received = self.bytes_received.labels(port)
        sent = self.bytes_sent.labels(port)
        if isinstance(stream, trio.abc.HalfCloseableStream):
            return MeteredHalfCloseableStream(stream, received, sent)
        return MeteredStream(stream, received, sent)

    def storage(self, storage: Storage) -> MeteredStorage:
        """`storage`, its fsyncs timed and its size exported as papaya_log_bytes."""
        metered = MeteredStorage(storage, self.fsync_seconds)
        self.watch_log_file(lambda: metered.size_now)
        return metered

    def watch_log_file(self, size: Callable[[], float]) -> None:
        """Export papaya_log_bytes, read from `size` when scraped. Only a log kept in a file
        has it: with the Redis store the metric is absent, not a misleading 0."""
        gauge = Gauge("papaya_log_bytes", "Size of the log file in bytes", registry=self.registry)
        gauge.set_function(size)


class MeteredStream(trio.abc.Stream):
    """A stream that counts the bytes through it."""

    def __init__(self, stream: trio.abc.Stream, received: Counter, sent: Counter) -> None:
        self.stream = stream
        self._received = received
        self._sent = sent

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self._received.inc(len(data))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)
        self._sent.inc(len(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def direct_writer(self) -> DirectWriter | None:
        """The inner stream's non-blocking write, its bytes counted here too."""
        inner = direct_writer(self.stream)
        if inner is None:
            return None
        # One counter's `inc` (equal bound methods) for every stream of this port, so the
        # broadcaster's per-publish sums go to it in one increment.
        count, inner_count = self._sent.inc, inner.count
        if inner_count is uncounted:
            return DirectWriter(inner.write, count)

        def counted(sent: int) -> None:
            inner_count(sent)
            count(sent)

        return DirectWriter(inner.write, counted)


class MeteredHalfCloseableStream(MeteredStream, trio.abc.HalfCloseableStream):
    """A MeteredStream over a stream that can half-close."""

    stream: trio.abc.HalfCloseableStream

    def __init__(
        self, stream: trio.abc.HalfCloseableStream, received: Counter, sent: Counter
    ) -> None:
        super().__init__(stream, received, sent)

    async def send_eof(self) -> None:
        await self.stream.send_eof()


class MeteredStorage:
    """A `Storage` whose fsyncs are timed (trio's clock) and whose size is known without I/O."""

    def __init__(self, storage: Storage, fsync_seconds: Histogram) -> None:
        self._storage = storage
        self._fsync_seconds = fsync_seconds
        self.size_now = 0

    async def size(self) -> int:
        self.size_now = await self._storage.size()
        return self.size_now

    async def read(self, offset: int, length: int) -> bytes:
        return await self._storage.read(offset, length)

    async def append(self, data: bytes) -> None:
        await self._storage.append(data)
        self.size_now += len(data)

    async def truncate(self, size: int) -> None:
        await self._storage.truncate(size)
        self.size_now = size

    async def sync(self) -> None:
        started = trio.current_time()
        await self._storage.sync()
        self._fsync_seconds.observe(trio.current_time() - started)

    async def aclose(self) -> None:
        await self._storage.aclose()
