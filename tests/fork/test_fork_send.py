"""What one SEND wake-up writes: real log file, real socket pair, the dialects' own encoders."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from papaya_trio.fork import send, wakeup
from papaya_trio.fork.connection import Connection, Stopped
from papaya_trio.fork.logfile import (
    DurableEnd,
    LogFile,
    LogWriter,
    count_lines,
    open_index,
)
from papaya_trio.fork.send import Sender
from papaya_trio.fork.signals import SignalWatch
from papaya_trio.logstore import FsyncPolicy
from papaya_trio.protocol.events import Ack, Message
from papaya_trio.protocol.native import encode_line
from papaya_trio.protocol.papaya import encode_history, encode_live
from papaya_trio.records import Record, RecordScanner, encode_record


class RecordingConnection(Connection):
    """A real connection that also keeps what each immediate send took."""

    def __init__(self, sock: socket.socket, signals: SignalWatch) -> None:
        super().__init__(sock, signals, "test")
        self.writes: list[bytes] = []

    def send_now(self, data: memoryview) -> int:
        sent = super().send_now(data)
        self.writes.append(bytes(data[:sent]))
        return sent


@dataclass
class Rig:
    sender: Sender
    conn: RecordingConnection
    client: socket.socket
    writer: LogWriter
    wake_fd: int
    poke_fd: int
    reply_fd: int
    queue_reply_fd: int

    def store(self, user: str, text: str, **fields: bool | str) -> None:
        self.writer.append(user, text, **fields)  # type: ignore[arg-type]
        wakeup.poke(self.poke_fd)

    def received(self) -> bytes:
        """Everything the client has been sent so far (the socket pair holds it all)."""
        data = b""
        while True:
            try:
                data += self.client.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return data


@contextmanager
def sender_rig(tmp_path: Path, *, native: bool, head: int = 0) -> Iterator[Rig]:
    """A SEND for a client whose stream starts after record `head` (already in the log), in
    this process: it watches SIGTERM as a SEND does (the handler is restored afterwards)."""
    previous_wakeup_fd = signal.set_wakeup_fd(-1)
    previous_handler = signal.getsignal(signal.SIGTERM)
    signals = SignalWatch([signal.SIGTERM])
    log = LogFile(tmp_path / "chat.log")
    writer_log = LogFile(tmp_path / "chat.log")
    index = open_index(writer_log)
    durable = DurableEnd(FsyncPolicy.NEVER, 0)
    writer = LogWriter(writer_log, index, durable, lambda: 1764167305123)
    server_end, client_end = socket.socketpair()
    wake_fd, poke_fd = wakeup.open_wake_pipe()
    reply_fd, queue_reply_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    conn = RecordingConnection(server_end, signals)
    sender = Sender(
        conn,
        log,
        index.reader_for(log, 1),
        durable,
        user="reader",
        cursor=0,
        head=head,
        native=native,
        wake_fd=wake_fd,
        reply_fd=reply_fd,
        max_lag=1000,
    )
    try:
        yield Rig(sender, conn, client_end, writer, wake_fd, poke_fd, reply_fd, queue_reply_fd)
    finally:
        for fd in (wake_fd, poke_fd, reply_fd, queue_reply_fd):
            os.close(fd)
        server_end.close()
        client_end.close()
        writer.close()
        writer_log.close()
        log.close()
        signal.set_wakeup_fd(previous_wakeup_fd)
        signal.signal(signal.SIGTERM, previous_handler)
        signals.close_in_child()


def stored(tmp_path: Path) -> list[Record]:
    scanner = RecordScanner()
    records = [item.record for item in scanner.feed((tmp_path / "chat.log").read_bytes())]
    assert scanner.problem is None and scanner.pending == 0
    return records


def store_variety(rig: Rig) -> None:
    """Messages of every shape the renderers know."""
    rig.store("alice", "hello")
    rig.store("bob", "waves", action=True)
    rig.store("carol", "two\nlines", dialect="papaya")
    rig.store("dave", "verified ✓ ‮bidi", verified=True)
    rig.store("erin", "", dialect="papaya")


def test_messages_stored_between_wake_ups_go_out_in_one_write_as_rendered_one_by_one(
    tmp_path: Path,
) -> None:
    with sender_rig(tmp_path, native=True) as rig:
        store_variety(rig)  # all stored while SEND was busy elsewhere: five pokes waiting
        rig.sender.wake_up({rig.wake_fd})
        records = stored(tmp_path)
        one_by_one = b"".join(encode_line(Message(record)) for record in records)
        assert rig.conn.writes == [one_by_one]
        assert rig.received() == one_by_one
        assert rig.sender.cursor == 5
        rig.sender.wake_up({rig.wake_fd})  # the pokes were drained: nothing is sent twice
        assert rig.conn.writes == [one_by_one] and rig.received() == b""


def test_papaya_batch_is_the_history_lines_then_the_live_lines_ending_in_one_nul(
    tmp_path: Path,
) -> None:
    history = [encode_record(Record(seq, 0, "old", f"line {seq}")) for seq in (1, 2)]
    (tmp_path / "chat.log").write_bytes(b"".join(history))
    with sender_rig(tmp_path, native=False, head=2) as rig:
        store_variety(rig)
        rig.sender.wake_up({rig.wake_fd})
        records = stored(tmp_path)
        expected = encode_history(records[:2]) + encode_live(records[2:])
        assert expected.count(b"\x00") == 1 and expected.endswith(b"\x00")
        assert rig.conn.writes == [expected]
        assert rig.received() == expected
        rig.store("frank", "later")
        rig.sender.wake_up({rig.wake_fd})
        assert rig.received() == b"frank: later\x00"


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of about 1,000 bytes of log, read in chunks of 512."""
    monkeypatch.setattr(send, "BATCH_BYTES", 1000)
    monkeypatch.setattr("papaya_trio.fork.logfile.READ_CHUNK", 512)


def store_backlog(rig: Rig) -> None:
    """About 4,000 bytes of log: four small batches or more."""
    for i in range(40):
        rig.store("alice", f"message {i} " + "x" * 40)


@pytest.mark.usefixtures("small_batches")
def test_a_backlog_goes_out_in_writes_of_about_the_batch_cap_and_replies_come_last(
    tmp_path: Path,
) -> None:
    with sender_rig(tmp_path, native=True) as rig:
        store_backlog(rig)
        ack = encode_line(Ack("a-1", 40))
        os.write(rig.queue_reply_fd, ack)
        rig.sender.wake_up({rig.wake_fd, rig.reply_fd})
        records = stored(tmp_path)
        one_by_one = b"".join(encode_line(Message(record)) for record in records)
        assert rig.received() == one_by_one + ack
        assert b"".join(rig.conn.writes) == one_by_one + ack
        assert len(rig.conn.writes) >= 4
        assert rig.conn.writes[-1].endswith(ack) and ack not in b"".join(rig.conn.writes[:-1])
        for write in rig.conn.writes:  # a batch ends with the chunk that reaches the cap
            objects = [json.loads(line) for line in write.splitlines()]
            seqs = [obj["seq"] for obj in objects if obj["type"] == "message"]
            log_bytes = sum(len(encode_record(records[seq - 1])) for seq in seqs)
            assert log_bytes <= 1000 + 512


@pytest.mark.usefixtures("small_batches")
def test_a_stop_signal_is_seen_between_the_batches_of_a_backlog(tmp_path: Path) -> None:
    with sender_rig(tmp_path, native=True) as rig:
        store_backlog(rig)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the backlog is being written
        with pytest.raises(Stopped):
            rig.sender.wake_up({rig.wake_fd})
        records = stored(tmp_path)
        first_batch = rig.conn.writes[0]
        assert rig.conn.writes == [first_batch] and rig.received() == first_batch
        sent = [json.loads(line)["seq"] for line in first_batch.splitlines()]
        assert sent == list(range(1, rig.sender.cursor + 1)) and rig.sender.cursor < 40
        assert first_batch == b"".join(encode_line(Message(r)) for r in records[: len(sent)])


def test_the_lag_is_counted_in_lines_up_to_the_durable_end_without_a_torn_tail(
    tmp_path: Path,
) -> None:
    records = [encode_record(Record(seq, 0, "alice", f"text {seq}")) for seq in range(1, 11)]
    torn = encode_record(Record(11, 0, "bob", "cut short"))[:20]
    (tmp_path / "chat.log").write_bytes(b"".join(records) + torn)
    log = LogFile(tmp_path / "chat.log")
    try:
        ends = [sum(map(len, records[:n])) for n in range(11)]
        assert count_lines(log, 0, None, 16) == (10, ends[10])  # the torn record is no line
        assert count_lines(log, 0, ends[6], 16) == (6, ends[6])  # nothing past the durable end
        assert count_lines(log, ends[3], ends[3], 16) == (0, ends[3])
    finally:
        log.close()


def test_a_line_longer_than_a_chunk_ends_the_count_as_a_lower_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = encode_record(Record(1, 0, "alice", "short"))
    long = encode_record(Record(2, 0, "alice", "y" * 3000))
    (tmp_path / "chat.log").write_bytes(short + long)
    monkeypatch.setattr("papaya_trio.fork.logfile.READ_CHUNK", 1024)
    log = LogFile(tmp_path / "chat.log")
    try:
        assert count_lines(log, 0, None, 16) == (1, len(short))  # bounded, never stuck
        assert count_lines(log, 0, None, 1) == (1, len(short))
    finally:
        log.close()
