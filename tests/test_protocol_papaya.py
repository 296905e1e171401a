"""The papayaChat dialect, byte for byte as the original C server spoke it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from papaya_trio.protocol.decoding import NEED_DATA
from papaya_trio.protocol.events import EndOfStream, KeyPresented, Message, SendText, Violation
from papaya_trio.protocol.papaya import (
    PapayaDecoder,
    encode_history,
    encode_live,
    encode_writes,
    history_tail,
)
from papaya_trio.protocol.rules import MAX_PAPAYA_USER_BYTES
from papaya_trio.records import Record

KEY = b"k" * 128


def events_of(decoder: PapayaDecoder) -> list[object]:
    found = []
    while (event := decoder.next_event()) is not NEED_DATA:
        found.append(event)
    return found


def test_key_then_lines() -> None:
    decoder = PapayaDecoder(1000, 100)
    decoder.receive_data(KEY[:100])
    assert events_of(decoder) == []
    decoder.receive_data(KEY[100:] + b"alice: hello\nbob: hi: there\n")
    assert events_of(decoder) == [
        KeyPresented(KEY),
        SendText("hello", user="alice"),
        SendText("hi: there", user="bob"),
    ]
    decoder.receive_data(b"carol: unfinished")
    decoder.receive_data(b"")
    assert events_of(decoder) == [EndOfStream()]


def test_nul_after_each_line_from_old_original_clients_is_ignored() -> None:
    decoder = PapayaDecoder(1000, 100)
    decoder.receive_data(KEY + b"erin: one\n\x00erin: two\n\x00")
    decoder.receive_data(b"")
    assert events_of(decoder) == [
        KeyPresented(KEY),
        SendText("one", user="erin"),
        SendText("two", user="erin"),
        EndOfStream(),
    ]


def test_early_close_before_the_key() -> None:
    decoder = PapayaDecoder(1000, 100)
    decoder.receive_data(KEY[:5])
    decoder.receive_data(b"")
    assert events_of(decoder) == [EndOfStream()]


def test_bad_lines_are_dropped_not_stored() -> None:
    decoder = PapayaDecoder(1000, 5)
    decoder.receive_data(KEY + b"no colon\n: empty user\na b: spaced user\n")
    decoder.receive_data(b"alice: toolong\nalice: \xff\nalice: ok\n")
    events = events_of(decoder)
    assert events[0] == KeyPresented(KEY)
    assert all(isinstance(e, Violation) and e.code == "dropped" for e in events[1:-1])
    assert len(events) == 7
    assert events[-1] == SendText("ok", user="alice")


def test_empty_texts_and_long_names_are_accepted_up_to_the_bound() -> None:
    """The original client sends both; a name past MAX_PAPAYA_USER_BYTES is still dropped."""
    long_name = "n" * MAX_PAPAYA_USER_BYTES
    decoder = PapayaDecoder(4096, 100)
    decoder.receive_data(KEY + b"alice: \n" + long_name.encode() + b": hi\n")
    decoder.receive_data(b"\xc3\xa9" * (MAX_PAPAYA_USER_BYTES // 2) + b"x: too long by a byte\n")
    events = events_of(decoder)
    assert events[1:3] == [SendText("", user="alice"), SendText("hi", user=long_name)]
    assert isinstance(events[3], Violation) and events[3].code == "dropped"
    assert "256 bytes" in events[3].message


def test_overlong_line_is_fatal() -> None:
    decoder = PapayaDecoder(20, 10)
    decoder.receive_data(KEY + b"a" * 21)
    [_, violation] = events_of(decoder)
    assert isinstance(violation, Violation) and violation.fatal


def test_live_message_ends_in_nul_and_history_in_newlines() -> None:
    records = [Record(1, 0, "alice", "hi"), Record(2, 0, "bob", "yo")]
    assert encode_live(records[:1]) == b"alice: hi\x00"
    assert encode_history(records) == b"alice: hi\nbob: yo\n"


def test_a_burst_goes_out_as_the_original_daemon_frames_it() -> None:
    """Pending lines joined by newlines, one final NUL, one write (issue 13)."""
    burst = [Message(Record(seq, 0, "alice", f"m{seq}")) for seq in range(1, 7)]
    writes = encode_writes(burst)
    assert writes == [b"alice: m1\nalice: m2\nalice: m3\nalice: m4\nalice: m5\nalice: m6\x00"]
    # The original client prints each read up to its first NUL: all six lines.
    assert writes[0].split(b"\x00")[0].count(b"\n") == 5


def test_history_and_live_in_one_batch_are_two_writes() -> None:
    history = [Message(Record(1, 0, "a", "old"), replay=True)]
    live = [Message(Record(2, 0, "b", "new")), Message(Record(3, 0, "c", "newer"))]
    assert encode_writes([*history, *live]) == [b"a: old\n", b"b: new\nc: newer\x00"]


def test_actions_and_multi_line_texts_become_lines() -> None:
    action = Record(1, 0, "tom", "waves", action=True)
    multi = Record(2, 0, "ann", "one\ntwo")
    assert encode_live([action, multi]) == b"* tom waves\nann: one\nann: two\x00"
    assert encode_history([multi]) == b"ann: one\nann: two\n"


def test_history_tail_counts_the_lines_of_multi_line_messages() -> None:
    records = [Record(i, 0, "u", "a\nb\nc") for i in range(1, 5)]
    assert [r.seq for r in history_tail(records)] == [3, 4]  # 6 lines; a third would make 9


def test_history_tail_is_seven_lines_at_most() -> None:
    records = [Record(i, 0, "u", f"m{i}") for i in range(1, 11)]
    assert [r.seq for r in history_tail(records)] == [4, 5, 6, 7, 8, 9, 10]


def test_history_tail_fits_in_1050_bytes() -> None:
    records = [Record(i, 0, "u", "x" * 297) for i in range(1, 8)]  # 301-byte lines
    tail = history_tail(records)
    assert [r.seq for r in tail] == [5, 6, 7]
    assert len(encode_history(tail)) <= 1050
    assert history_tail([]) == []


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes, chunk: int) -> None:
    decoder = PapayaDecoder(256, 64)
    for start in range(0, len(data), chunk):
        decoder.receive_data(data[start : start + chunk])
        for event in events_of(decoder):
            assert isinstance(event, KeyPresented | SendText | Violation)
            if isinstance(event, KeyPresented):
                assert len(event.key) == 128
