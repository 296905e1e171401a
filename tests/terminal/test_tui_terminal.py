"""The full-screen client in real pseudo-terminals, against a real server process.

pexpect drives one client through typing, receiving, scrolling, resizing and quitting. The
restart test runs the client in tmux, whose `capture-pane` shows the screen as the user sees it,
so it can count every message exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pexpect

from tests.real_server import RunningServer, ServerFactory
from tests.terminal.conftest import CLIENT, TIMEOUT, Tmux, key_file, restart, start_tui
from tests.terminal.test_plain_process import once

PAGE_UP, PAGE_DOWN = "\x1b[5~", "\x1b[6~"


def spawn_tui(server: RunningServer, env: dict[str, str], key: Path) -> pexpect.spawn:
    return pexpect.spawn(
        CLIENT[0],
        [*CLIENT[1:], "--port", str(server.port), "--key-file", str(key)],
        env={**env, "PAPAYA_USER": "alice"},
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=TIMEOUT,
    )


def test_type_receive_scroll_resize_quit(
    chat_server: RunningServer, client_env: dict[str, str]
) -> None:
    tui = spawn_tui(chat_server, client_env, key_file(chat_server))
    try:
        tui.expect("connected to")
        tui.send("hello from alice 漢字\r")
        tui.expect("hello from alice 漢字")
        assert once(chat_server, client_env, "hi alice\n").returncode == 0
        tui.expect("hi alice")

        lines = "".join(f"scroll line {n:02}\n" for n in range(40))
        assert once(chat_server, client_env, lines).returncode == 0
        tui.expect("scroll line 39")
        tui.send(PAGE_UP)
        tui.expect(r"scroll line 1\d")  # older lines are drawn again, above the status line
        tui.expect("scrolled up")
        tui.send(PAGE_DOWN * 3)
        tui.send("back at the bottom\r")
        tui.expect("back at the bottom")

        tui.setwinsize(20, 50)
        tui.expect("alice")  # the status line, redrawn for the new size
        tui.send("x" * 60 + " wrapped tail\r")
        tui.expect("wrapped tail")

        tui.send("/quit\r")
        tui.expect(pexpect.EOF)
    finally:
        tui.close(force=True)
    assert tui.exitstatus == 0


def test_wrong_key_leaves_the_screen_and_exits_3(
    chat_server: RunningServer, client_env: dict[str, str], wrong_key_file: Path
) -> None:
    tui = spawn_tui(chat_server, client_env, wrong_key_file)
    tui.expect("the server refused us")
    tui.expect(pexpect.EOF)
    tui.close()
    assert tui.exitstatus == 3


def test_reconnect_after_server_restart_without_duplicates(
    servers: ServerFactory, chat_server: RunningServer, client_env: dict[str, str], tmux: Tmux
) -> None:
    start_tui(tmux, chat_server, client_env, size=(100, 30))
    tmux.wait_for(lambda s: "connected to" in s, "the first connection")
    tmux.run("send-keys", "-t", "chat", "before restart", "Enter")
    tmux.wait_for(lambda s: "alice: before restart" in s, "our own message")

    restarted = restart(servers, chat_server)
    tmux.wait_for(lambda s: s.count("-- connected to") == 2, "the reconnection")
    assert once(restarted, client_env, "after restart\n").returncode == 0
    tmux.run("send-keys", "-t", "chat", "mine after restart", "Enter")
    screen = tmux.wait_for(
        lambda s: "bob: after restart" in s and "alice: mine after restart" in s,
        "messages after the restart",
    )
    assert "disconnected" in screen
    for text in ("alice: before restart", "bob: after restart", "alice: mine after restart"):
        assert screen.count(text) == 1, screen
