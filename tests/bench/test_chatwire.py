"""The papayaChat wire's counting and framing, on hand-made server output."""

from __future__ import annotations

import trio.testing

from papaya_trio.bench.chatwire import Client, NativeWire, PapayaWire


def client() -> Client:
    stream, _peer = trio.testing.memory_stream_pair()  # no I/O in these tests
    return Client(0, stream, head=0, rest=b"")


def test_each_number_counts_once_per_client_in_any_order() -> None:
    wire = PapayaWire(messages=16)
    one = client()
    # A burst as papaya-trio writes it (newline-joined, one NUL), then one as the original
    # daemon does (a NUL per message), out of send order, with a repeat.
    block = b"b1: bench 3 xx\nb0: bench 1 xx\x00b1: bench 2 xx\x00b0: bench 1 xx\x00"
    assert list(wire.take(one, block, sent=4)) == [3, 1, 2]
    assert one.out_of_order == 1  # the second "bench 1"
    # A number not sent yet, and lines that are not the bench's, count for nothing.
    other = b"b9: bench 12 x\x00alice: bench 0 hello\x00b0: joining the bench\x00"
    assert list(wire.take(one, other, sent=4)) == []
    assert list(wire.take(client(), block, sent=4)) == [3, 1, 2]  # another client: its own map


def test_either_line_end_closes_a_line() -> None:
    wire = PapayaWire(messages=1)
    assert wire.last_line_end(bytearray(b"a: x\nb: y\x00c: partial")) == 9
    assert wire.last_line_end(bytearray(b"history line\npartial")) == 12
    assert wire.last_line_end(bytearray(b"partial")) == -1
    assert NativeWire().last_line_end(bytearray(b"{}\x00{}")) == -1  # NUL means nothing there


def test_native_wire_keeps_the_servers_order() -> None:
    wire = NativeWire()
    one = client()
    line = '{{"type":"message","seq":{},"t":"x","user":"b0","text":"bench {} xx"}}\n'
    block = (line.format(1, 0) + line.format(2, 1) + line.format(2, 1)).encode()
    assert list(wire.take(one, block, sent=2)) == [0, 1]
    assert one.out_of_order == 1
    assert list(wire.take(one, b'{"type":"error","code":"x"}\n', sent=2)) == []
    assert one.errors == 1 and "error" in one.first_error


def test_hostile_numbers_are_not_taken() -> None:
    # Python refuses int() of more than 4,300 digits: such a "number" must simply not match.
    wire = PapayaWire(messages=4)
    huge = b"9" * 5000
    block = b"b1: bench " + huge + b" x\x00b" + huge + b": bench 1 x\x00b2: bench 2 x\x00"
    assert list(wire.take(client(), block, sent=4)) == [2]
    native = b'{"type":"message","seq":' + huge + b',"text":"bench 1 x"}\n'
    assert list(NativeWire().take(client(), native, sent=4)) == []
