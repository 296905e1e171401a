"""The full-screen client's issue-13 behaviour in a real terminal (tmux) against a real server:
the reconnect status line, pending messages, wrapping at 20x6, /who, PageUp history; and the
command line's --version and its answer when pointed at the HTTP port."""

from __future__ import annotations

import subprocess
import time

from tests.real_server import ServerFactory
from tests.terminal.conftest import CLIENT, TIMEOUT, Tmux, key_file, start_tui
from tests.terminal.test_plain_process import listener, once

PAGE_UP = "PPage"


def type_line(tmux: Tmux, text: str) -> None:
    tmux.run("send-keys", "-t", "chat", "-l", text)
    tmux.run("send-keys", "-t", "chat", "Enter")


def test_outage_is_one_status_line_and_offline_messages_are_pending_until_confirmed(
    trio_servers: ServerFactory, client_env: dict[str, str], tmux: Tmux
) -> None:
    server = trio_servers.start()
    start_tui(tmux, server, client_env)
    tmux.wait_for(lambda s: "connected" in s, "the first connection")
    assert server.stop() == 0, server.log

    tmux.wait_for(lambda s: "attempt 3:" in s, "three failed reconnection attempts")
    type_line(tmux, "typed while offline")
    screen = tmux.wait_for(lambda s: "typed while offline (pending)" in s, "a pending row")
    assert "reconnecting in" in screen.splitlines()[-2], screen
    assert screen.count("disconnected") == 1, screen  # one chat line for the whole outage
    assert "retrying" not in screen, screen

    restarted = trio_servers.start(data_dir=server.data_dir, port=server.port)
    screen = tmux.wait_for(
        lambda s: "alice: typed while offline" in s and "pending" not in s,
        "the offline message confirmed in place",
    )
    assert screen.count("typed while offline") == 1, screen
    assert screen.count("disconnected") == 1, screen
    assert "attempt" not in screen, screen
    with listener(restarted, client_env) as reader:  # stored once, as alice
        reader.expect(r"\d\d:\d\d alice: typed while offline\r?\n")


def test_wrapping_at_20x6_shows_the_end_of_the_newest_message_with_a_hanging_indent(
    trio_servers: ServerFactory, client_env: dict[str, str], tmux: Tmux
) -> None:
    server = trio_servers.start()
    start_tui(tmux, server, client_env, size=(20, 6))
    tmux.wait_for(lambda s: "alice" in s, "the status line")
    words = " ".join(f"w{n}" for n in range(30))
    assert once(server, client_env, f"{words} END\n").returncode == 0
    screen = tmux.wait_for(lambda s: "END" in s, "the end of the wrapped message")
    rows = screen.splitlines()
    body = [row for row in rows[:4] if row.strip()]
    assert body[-1].rstrip().endswith("END"), screen  # the last row, not cut off
    assert all(row.startswith("  ") and row[2] != " " for row in body), screen  # indented


def test_who_and_the_online_count(
    trio_servers: ServerFactory, client_env: dict[str, str], tmux: Tmux
) -> None:
    server = trio_servers.start()
    start_tui(tmux, server, client_env)
    tmux.wait_for(lambda s: "1 online" in s, "alice alone")
    with listener(server, client_env):  # carol joins
        tmux.wait_for(lambda s: "2 online" in s, "carol's arrival in the count")
        type_line(tmux, "/who")
        tmux.wait_for(lambda s: "online (2): alice, carol" in s, "the /who list")
    tmux.wait_for(lambda s: "1 online" in s, "carol's departure in the count")


def test_page_up_at_the_top_loads_older_messages_down_to_the_start(
    trio_servers: ServerFactory, client_env: dict[str, str], tmux: Tmux
) -> None:
    server = trio_servers.start()
    lines = "".join(f"old {n:03}\n" for n in range(130))
    assert once(server, client_env, lines).returncode == 0
    start_tui(tmux, server, client_env)
    screen = tmux.wait_for(lambda s: "old 129" in s, "the newest messages")
    seen = set()
    for _ in range(40):  # about 130 rows at 22 a page, plus the pages' requests
        seen.update(row.split("bob: ")[1] for row in screen.splitlines() if "bob: old" in row)
        if "start of history" in screen:
            break
        tmux.run("send-keys", "-t", "chat", PAGE_UP)
        before = screen
        screen = tmux.wait_for(
            lambda s, before=before: s != before and "loading older" not in s,
            "the scroll or the older page",
        )
    else:
        raise AssertionError(f"no start of history after 40 PageUps; screen:\n{screen}")
    rows = screen.splitlines()
    start = next(n for n, row in enumerate(rows) if "start of history" in row)
    assert any("bob: old 000" in row for row in rows[start:]), screen
    assert {f"old {n:03}" for n in range(130)} <= {text.strip() for text in seen}, seen


def test_version(client_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*CLIENT, "--version"], env=client_env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0
    assert result.stdout.startswith("papaya-chat 0.")


def test_pointed_at_the_http_port_it_says_so_at_once(
    trio_servers: ServerFactory, client_env: dict[str, str]
) -> None:
    server = trio_servers.start()
    assert server.http_port is not None
    started = time.monotonic()
    result = subprocess.run(
        [*CLIENT, "--plain", "--port", str(server.http_port), "--user", "bob"],
        env={**client_env, "PAPAYA_KEY_FILE": str(key_file(server))},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert "this port speaks HTTP, not papaya-trio: use the TCP port" in result.stderr
    assert elapsed < 8, elapsed  # the handshake deadline (10 s) was not what ended it
