"""The log's operations against real servers (both modes): the lock, start-up quarantine,
`log repair` refused while serving, `log backup` while the server takes writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from papaya_trio.records import Record, RecordScanner, encode_record
from papaya_trio.salvage import LOST_USER
from tests.memory_world import LineClient
from tests.real_server import RunningServer, ServerFactory

TIMEOUT = 60.0


async def native(server: RunningServer, user: str) -> LineClient:
    client = LineClient(await trio.open_tcp_stream("127.0.0.1", server.port))
    await client.hello(user, key=server.key)
    return client


def log_command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "papaya_trio", "log", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def records_in(data: bytes) -> list[Record]:
    scanner = RecordScanner()
    found = [scanned.record for scanned in scanner.feed(data)]
    assert scanner.problem is None and scanner.pending == 0
    return found


async def test_deleting_server_lock_does_not_let_a_second_server_in(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = servers.start(data_dir=data)
    (data / "server.lock").unlink(missing_ok=True)  # what an operator "clearing a stale lock" does
    assert not list(data.glob("*.lock"))  # nothing left to delete: the lock is on chat.log
    with pytest.raises(RuntimeError, match="exited with 2") as refused:
        servers.start(data_dir=data)
    assert "another server" in str(refused.value) and "chat.log" in str(refused.value)
    client = await native(first, "alice")
    with trio.fail_after(TIMEOUT):
        assert await client.chat("still the only writer", "c-1") == 1
    await client.stream.aclose()
    checked = log_command("check", "--data-dir", str(data))  # reads while the server runs
    assert checked.returncode == 0 and "1 messages (1..1)" in checked.stdout
    assert first.stop() == 0
    second = servers.start(data_dir=data)  # the lock went with the first server
    assert second.stop() == 0


async def test_a_flipped_bit_in_the_last_record_is_quarantined_and_its_number_kept(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    lines = [encode_record(Record(seq, 1_764_000_000_000, "alice", f"m{seq}")) for seq in (1, 2, 3)]
    bad = bytearray(lines[2])
    bad[20] ^= 0x04
    (data / "chat.log").write_bytes(lines[0] + lines[1] + bytes(bad))

    server = servers.start(data_dir=data)

    quarantines = list(data.glob("chat.log.quarantine-*"))
    assert len(quarantines) == 1 and quarantines[0].read_bytes() == bytes(bad)
    assert "ERROR" in server.log and str(quarantines[0]) in server.log
    client = await native(server, "bob")
    with trio.fail_after(TIMEOUT):
        assert await client.chat("after the damage", "c-1") == 4  # 3 is never given again
    await client.stream.aclose()
    assert server.stop() == 0
    stored = records_in((data / "chat.log").read_bytes())
    assert [r.text for r in stored[:2]] == ["m1", "m2"]
    assert stored[2].user == LOST_USER and stored[3].text == "after the damage"


async def test_repair_is_refused_while_a_server_holds_the_log(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = servers.start(data_dir=data)
    refused = log_command("repair", "--data-dir", str(data))
    assert refused.returncode == 2 and "stop the server first" in refused.stderr
    assert server.stop() == 0
    assert log_command("repair", "--data-dir", str(data)).returncode == 0


async def test_backup_while_the_server_takes_writes_is_a_verified_prefix(
    servers: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = servers.start(data_dir=data)
    writers, backups, after = 4, 5, 10
    results: list[subprocess.CompletedProcess[bytes]] = []
    started, done = trio.Event(), trio.Event()

    async def write(name: str) -> None:
        client = await native(server, name)
        extra = 0
        for i in range(5000):  # bounded; it stops `after` messages past the last backup
            await client.chat(f"{name} {i} " + "x" * (i * 37 % 900), f"{name}-{i}")
            started.set()
            extra += done.is_set()
            if extra >= after:
                break
        await client.stream.aclose()

    async def back_up() -> None:
        await started.wait()
        for n in range(backups):
            command = [sys.executable, "-m", "papaya_trio", "log", "backup"]
            command += [str(tmp_path / f"copy-{n}"), "--data-dir", str(data)]
            results.append(await trio.run_process(command, capture_stdout=True, check=False))
        done.set()

    with trio.fail_after(TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(write, f"w{w}")
            nursery.start_soon(back_up)
    assert server.stop() == 0
    final = (data / "chat.log").read_bytes()
    total = len(records_in(final))  # dense and intact
    assert len(results) == backups
    for n, result in enumerate(results):
        assert result.returncode == 0, result
        copy = (tmp_path / f"copy-{n}").read_bytes()
        assert final.startswith(copy)  # a consistent cut at a record boundary
        count = len(records_in(copy))
        assert 0 < count < total  # taken while the writes went on
        assert b"(verified)" in result.stdout and f"{count} messages".encode() in result.stdout


async def test_a_real_server_with_retention_trims_segments_and_numbers_on_across_restarts(
    trio_servers: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    options = ("--retention-bytes", "20000", "--segment-bytes", "4096", "--metrics", "http")
    server = trio_servers.start(*options, data_dir=data)
    client = await native(server, "alice")
    with trio.fail_after(TIMEOUT):
        for i in range(150):
            assert await client.chat(f"{i} " + "y" * 200, f"c-{i}") == i + 1
    await client.stream.aclose()
    assert server.stop() == 0
    segments = sorted(data.glob("segment-*.log"))
    assert segments and sum(p.stat().st_size for p in [*segments, data / "chat.log"]) < 30_000
    checked = log_command("check", "--data-dir", str(data))
    assert checked.returncode == 0 and "..150)" in checked.stdout

    restarted = trio_servers.start(*options, data_dir=data)
    late = LineClient(await trio.open_tcp_stream("127.0.0.1", restarted.port))
    with trio.fail_after(TIMEOUT):
        await late.hello("late", key=restarted.key, since=1)
        notice = await late.expect("error")
        assert notice["code"] == "history_trimmed" and not notice["fatal"]
        first = int(notice["message"].rsplit(" ", 1)[1])
        replay = await late.messages(150 - first + 1)
        assert [m["seq"] for m in replay] == list(range(first, 151))
        assert await late.chat("after the restart", "late-1") == 151
    await late.stream.aclose()
    assert restarted.stop() == 0
