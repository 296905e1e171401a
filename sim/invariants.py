"""The invariants, and the oracle that checks them as the run goes.

The oracle knows what every actor sent (each text is unique to one send attempt, so a text
identifies a message) and learns the log from three sides that must agree: what clients are
delivered, what they are acknowledged, and what the disk holds when each server life ("epoch")
ends. A run is cut into epochs by crashes and graceful restarts; within an epoch a sequence
number names one record. Every record a client was shown or confirmed must survive with the
same number a graceful restart (under every policy) and a power cut under `fsync = always`;
under "interval", a power cut may lose only what was first shown or confirmed less than one
interval and two fsyncs before it (docs/log-format.md: synced every `fsync_interval`), unless
an fsync had failed; under "never" a power cut may lose anything not synced.

The oracle never calls the code it checks. What the server promises is stated here from the
protocol documents: the log is read with this module's own reader of docs/log-format.md
(`read_log`, not the server's `RecordScanner`), the papayaChat history tail and line form come
from docs/protocol.md (`papaya_tail`, `papaya_line`, not the server's `history_tail` and
`Record.raw_line`). `Record` is used only as a value (a frozen dataclass of the four fields).
The director also reads the server's visible head (`ServerHost.head`) as the target clients
must reach; once they have, the settling phase checks that head against the last record this
reader finds on the disk, so a server that misreports its head is caught too.

The first broken invariant ends the run: `fail` records it and cancels the whole simulation.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from papaya_trio.records import Record
from sim.trace import Trace

# Invariant names, as they appear in failure reports.
GAP_FREE = "gap-free-delivery"
NO_DUPLICATES = "no-duplicates"
NO_PHANTOMS = "nothing-unsent-delivered"
DURABLE = "confirmed-survive-crash"
HISTORY = "history-matches-log"
LIVENESS = "clients-reach-head"
SLOW_BOUND = "slow-client-isolated"
TASKS_GONE = "tasks-gone"
SHUTDOWN_DEADLINE = "shutdown-within-deadline"
REPLIES = "replies-are-right"
NO_CRASH = "no-unhandled-exception"
RUN_ENDS = "run-ends"
LIVELOCK = "time-advances"
ANNOUNCED = "shutdown-announced"
PRESENCE = "presence-converges"
HISTORY_PAGES = "history-pages-match-log"
ADMITTED = "members-admitted"
IDLE_DROPPED = "idle-dropped"
TOLD_WHY = "dropped-client-told-why"
PROMPT_KEPT = "prompt-reader-kept"

# docs/protocol.md, papayaChat dialect: "at most the last 7 messages, as raw `user: text\n`
# lines, no more of them than fit in the last 1050 bytes".
PAPAYA_TAIL_LINES = 7
PAPAYA_TAIL_BYTES = 1050


@dataclass(frozen=True, slots=True)
class Failure:
    """The first broken invariant of a run."""

    invariant: str
    detail: str
    time: float
    step: int


@dataclass(slots=True)
class Sent:
    """One text an actor sent, and whether the server may store it."""

    user: str
    client_id: str | None
    storable: bool


@dataclass(slots=True)
class PapayaView:
    """What one papayaChat connection received, checked against the log when its epoch ends."""

    who: str
    history: list[str] = field(default_factory=list)  # raw `user: text` lines
    live: list[str] = field(default_factory=list)


def read_log(data: bytes) -> list[Record]:
    """Every intact record at the start of `data`, without client ids (as clients see them),
    read as docs/log-format.md defines a record: `<crc32> <json>\n`, eight lower-case hex
    digits of zlib's CRC-32 of the JSON bytes, an object with integer `seq` and `t` and string
    `user` and `text` (and the optional marks `a`, `d`, `v`), `seq` one more than the record
    before. Reading stops at the first line
    that is torn or corrupt (what follows it is not the log the server may serve)."""
    records: list[Record] = []
    read_more(data, records, 0)
    return records


def read_more(data: bytes | bytearray, records: list[Record], start: int) -> int:
    """Append to `records` (the log's records before offset `start`) the intact ones from
    `start` on, as `read_log` reads them; return the offset where reading stopped. For a log
    that has only grown since `start` was returned, the records are `read_log`'s."""
    while (end := data.find(b"\n", start)) != -1:
        crc, space, body = data[start:end].partition(b" ")
        if not space or crc != b"%08x" % zlib.crc32(body):
            break
        try:
            obj = json.loads(body)
        except ValueError:
            break
        if not isinstance(obj, dict):
            break
        seq, t, user, text = (obj.get(name) for name in ("seq", "t", "user", "text"))
        if not (type(seq) is int and type(t) is int and isinstance(user, str)):
            break
        if not isinstance(text, str) or seq != len(records) + 1:
            break
        records.append(marked_record(seq, t, user, text, obj))
        start = end + 1
    return start


def marked_record(seq: int, t: int, user: str, text: str, marks: dict[str, object]) -> Record:
    """A record with the optional marks of docs/log-format.md read from `marks`: `a` (1: an
    action), `d` (the dialect, a string), `v` (1: a verified name); anything else is unmarked."""
    dialect = marks.get("d")
    return Record(
        seq,
        t,
        user,
        text,
        action=marks.get("a") == 1,
        dialect=dialect if isinstance(dialect, str) else None,
        verified=marks.get("v") == 1,
    )


def papaya_line(record: Record) -> str:
    """A message as the papayaChat dialect shows it (`user: text`, without the newline)."""
    return f"{record.user}: {record.text}"


def papaya_tail(lines: Sequence[str]) -> list[str]:
    """The papayaChat history a client must get when the log ends with `lines`: the newest
    ones, at most PAPAYA_TAIL_LINES, as many as fit (newline included) in PAPAYA_TAIL_BYTES."""
    tail: list[str] = []
    size = 0
    for text in reversed(lines[-PAPAYA_TAIL_LINES:]):
        size += len(text.encode()) + 1
        if size > PAPAYA_TAIL_BYTES:
            break
        tail.append(text)
    return tail[::-1]


class Oracle:
    """Checks every observation against everything observed before."""

    def __init__(
        self,
        trace: Trace,
        fail: Callable[[str, str], None],
        history: int,
        durable_after: float | None,
        *,
        shown_durable: bool = True,
    ) -> None:
        self._trace = trace
        self.fail = fail
        self._history = history
        # How long after it is first shown or confirmed a record must survive a power cut:
        # 0 under `fsync = always`, the interval and its fsyncs under "interval", never (None)
        # under "never". A graceful stop loses nothing under any policy.
        self._durable_after = durable_after
        # False: only what was confirmed must survive, not what was merely shown (a store
        # that replicates before it confirms but shows before it replicates: WAIT).
        self._shown_durable = shown_durable
        self._seen_at: dict[int, float] = {}  # this epoch's seqs: first shown or confirmed
        self._cut: tuple[float, bool] | None = None  # this epoch's power cut, and whether an
        # fsync had failed before it (after which the log promises nothing more)
        self._sent: dict[str, Sent] = {}
        self._by_seq: dict[int, Record] = {}  # this epoch's records as clients saw them
        self._by_text: dict[str, int] = {}
        self._acked: dict[tuple[str, str], int] = {}
        self._papaya: list[PapayaView] = []
        self.epoch = 0
        self.delivered = 0

    # --- what actors send -----------------------------------------------------------------
    def sent(self, text: str, user: str, client_id: str | None, *, storable: bool = True) -> None:
        """An actor is about to send `text` (unique per send attempt, shared by resends)."""
        self._sent.setdefault(text, Sent(user, client_id, storable))

    def papaya_view(self, who: str) -> PapayaView:
        """A fresh record of one papayaChat connection's input, checked at epoch end."""
        view = PapayaView(who)
        self._papaya.append(view)
        return view

    # --- what actors receive --------------------------------------------------------------
    def record_seen(self, record: Record, who: str) -> None:
        """A native client was delivered `record`."""
        self.delivered += 1
        self._trace.record("deliver", who=who, seq=record.seq)
        self._seen_at.setdefault(record.seq, trio.current_time())
        self._check_sent(record.user, record.text, who)
        known = self._by_seq.setdefault(record.seq, record)
        if known != record:
            self.fail(NO_DUPLICATES, f"{who} got seq {record.seq} as {record} but it was {known}")
            return
        self._bind_text(record.text, record.seq, who)

    def ack_seen(self, user: str, client_id: str, seq: int, text: str, who: str) -> None:
        """A native client was told its message `client_id` is stored as `seq`."""
        self._trace.record("ack", who=who, id=client_id, seq=seq)
        self._seen_at.setdefault(seq, trio.current_time())
        earlier = self._acked.setdefault((user, client_id), seq)
        if earlier != seq:
            self.fail(
                NO_DUPLICATES, f"{who}: id {client_id} confirmed as seq {seq}, earlier as {earlier}"
            )
            return
        self._bind_text(text, seq, who)

    def _check_sent(self, user: str, text: str, who: str) -> None:
        sent = self._sent.get(text)
        if sent is None or not sent.storable or sent.user != user:
            self.fail(NO_PHANTOMS, f"{who} got {user}: {text!r}, which nobody sent as {user}")

    def _bind_text(self, text: str, seq: int, who: str) -> None:
        earlier = self._by_text.setdefault(text, seq)
        if earlier != seq:
            self.fail(NO_DUPLICATES, f"{who}: {text!r} is stored as seq {earlier} and {seq}")

    # --- epochs ---------------------------------------------------------------------------
    def end_epoch(self, written: bytes) -> None:
        """The server stops; `written` is every byte it wrote (synced or not)."""
        self.end_epoch_records(read_log(written))

    def end_epoch_records(self, log: list[Record]) -> None:
        """The epoch ends with the log holding `log` (read by the oracle's own reader)."""
        for record in log:
            self._check_sent(record.user, record.text, "the log")
        texts: dict[str, int] = {}
        for record in log:
            if (earlier := texts.setdefault(record.text, record.seq)) != record.seq:
                self.fail(
                    NO_DUPLICATES, f"{record.text!r} is in the log as {earlier} and {record.seq}"
                )
                return
        for seq, seen in self._by_seq.items():
            if seq > len(log) or log[seq - 1] != seen:
                stored = log[seq - 1] if seq <= len(log) else "nothing"
                self.fail(HISTORY, f"clients were shown {seen} but the log holds {stored}")
                return
        for view in self._papaya:
            self._check_papaya(view, log)
        self._papaya.clear()

    def unconfirmed_in(self, log: list[Record]) -> str | None:
        """At the end of a run: what this epoch's clients were shown or confirmed that `log`
        does not hold at that number (None: all of it is there)."""
        for text, seq in self._by_text.items():
            if seq > len(log) or log[seq - 1].text != text:
                stored = log[seq - 1] if seq <= len(log) else "nothing"
                return f"{text!r} was shown or confirmed as seq {seq}, the log holds {stored}"
        return None

    def _check_papaya(self, view: PapayaView, log: list[Record]) -> None:
        lines = [papaya_line(r) for r in log]
        position = {line: index for index, line in enumerate(lines)}
        received = view.history + view.live
        if not received:
            return
        if any(line not in position for line in received):
            missing = next(line for line in received if line not in position)
            self.fail(NO_PHANTOMS, f"{view.who} got {missing!r}, which is not in the log")
            return
        start = position[received[0]]
        if lines[start : start + len(received)] != received:
            self.fail(GAP_FREE, f"{view.who} got a stream that is not a run of the log")
            return
        # The lines before the first NUL are the history tail, then maybe the start of a live
        # burst (joined by newlines, as the original daemon frames one): some prefix of them
        # must be the tail of the log as it was at that point.
        if view.history and not any(
            papaya_tail(lines[: start + k]) == view.history[:k]
            for k in range(min(len(view.history), PAPAYA_TAIL_LINES) + 1)
        ):
            self.fail(HISTORY, f"{view.who} got history {view.history}, not a tail of the log")

    def power_cut(self, fsync_failed: bool) -> None:
        """The power is cut now (the epoch ends as `end_epoch` says); `fsync_failed`: an fsync
        failed during the epoch."""
        self._cut = (trio.current_time(), fsync_failed)

    def _must_survive(self, seq: int) -> bool:
        if self._cut is None:
            return True  # a graceful stop: everything written is still there
        cut_at, fsync_failed = self._cut
        after = self._durable_after
        if after is None or (fsync_failed and after > 0):
            return False
        return self._seen_at.get(seq, cut_at) <= cut_at - after

    def begin_epoch(self, recovered: list[Record]) -> None:
        """The server (re)started on a log holding `recovered`."""
        for seq, seen in self._by_seq.items():
            lost = seq > len(recovered) or recovered[seq - 1] != seen
            if lost and self._shown_durable and self._must_survive(seq):
                self.fail(DURABLE, f"seq {seq} ({seen.text!r}) was shown, then lost")
                return
        for (user, client_id), seq in self._acked.items():
            if seq > len(recovered) and self._must_survive(seq):
                self.fail(DURABLE, f"{user}'s {client_id} was confirmed as {seq}, then lost")
                return
        self.epoch += 1
        self._cut = None
        self._seen_at = {}
        self._by_seq = {r.seq: r for r in recovered}
        self._by_text = {r.text: r.seq for r in recovered}
        self._acked = {key: seq for key, seq in self._acked.items() if seq <= len(recovered)}
        self._trace.record("epoch", epoch=self.epoch, records=len(recovered))


class NativeView:
    """One native connection's deliveries: a gap-free run that starts where it must."""

    def __init__(self, oracle: Oracle, who: str, since: int | None, history: int) -> None:
        self._oracle = oracle
        self._who = who
        self._since = since
        self._history = history
        self.welcome_head: int | None = None
        self.last: int | None = None

    def welcome(self, head: int) -> None:
        """The welcome fixes where the history must start."""
        self.welcome_head = head
        if self._since is not None:
            self.last = min(self._since, head)
        else:
            self.last = max(0, head - self._history)

    def message(self, record: Record) -> None:
        """One delivered message."""
        if self.last is None:
            self._oracle.fail(GAP_FREE, f"{self._who} got seq {record.seq} before the welcome")
            return
        if record.seq != self.last + 1:
            self._oracle.fail(GAP_FREE, f"{self._who} got seq {record.seq} after {self.last}")
            return
        self.last = record.seq
        self._oracle.record_seen(record, self._who)
