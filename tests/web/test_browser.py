"""The browser client in a real headless Chromium, against real server processes.

These run in CI (Debian's chromium and chromium-driver); they fail, never skip, without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.real_server import RunningServer, ServerFactory
from tests.web.browser import ChatPage, TcpClient, wait_for

Terminals = Callable[[RunningServer, str], TcpClient]
INJECTION = '<img src=x onerror="window.pwned = 1">'


def open_page(browsers: Callable[..., Any], server: RunningServer, **options: Any) -> ChatPage:
    assert server.url is not None, "the server logged no http listener"
    return ChatPage(browsers(**options), server.url)


def room_with_messages(
    trio_servers: ServerFactory, terminals: Terminals, count: int, *args: str
) -> tuple[RunningServer, TcpClient]:
    """A server started with `args` whose log holds "message 1" to "message COUNT" from bob
    (a terminal user, still connected)."""
    server = trio_servers.start(*args)
    bob = terminals(server, "bob")
    for i in range(1, count + 1):
        bob.chat(f"message {i}")
    return server, bob


def signed_in(
    browsers: Callable[..., Any], server: RunningServer, user: str, **options: Any
) -> ChatPage:
    """A page signed in as `user` and online."""
    page = open_page(browsers, server, **options)
    page.login(user, server.key)
    page.wait_status("online")
    return page


def test_two_pages_and_a_terminal_client_chat(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "terminal")
    alice = open_page(browsers, server)
    bob = open_page(browsers, server)
    alice.login("alice", server.key)
    bob.login("bob", server.key)
    alice.wait_status("online")
    bob.wait_status("online")

    alice.send("hello from alice")
    bob.wait_messages(1)
    bob.send("hi alice, bob here")
    alice.wait_messages(2)
    terminal.chat("the terminal says hi")

    expected = ["hello from alice", "hi alice, bob here", "the terminal says hi"]
    for page in (alice, bob):
        shown = page.wait_messages(3)
        assert [m["text"] for m in shown] == expected
        assert [m["user"] for m in shown] == ["alice", "bob", "terminal"]
        assert [m["seq"] for m in shown] == [1, 2, 3]
        assert all(m["time"].endswith("Z") for m in shown)
        assert page.pending() == 0
        assert page.console_errors() == []
    assert [m["own"] for m in alice.messages()] == [True, False, False]
    assert [m["own"] for m in bob.messages()] == [False, True, False]
    assert terminal.wait_messages(3) == expected


def test_history_appears_on_load(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "terminal")
    for text in ("first", "second", "third"):
        terminal.chat(text)
    page = open_page(browsers, server)
    page.login("late", server.key)
    assert [m["text"] for m in page.wait_messages(3)] == ["first", "second", "third"]
    page.wait_status("online")


def test_html_in_messages_renders_as_text(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "mallory")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    page.wait_status("online")
    terminal.chat(INJECTION)
    page.send("<b>bold?</b> & <script>window.pwned = 2</script>")
    shown = page.wait_messages(2)
    assert [m["text"] for m in shown] == [
        INJECTION,
        "<b>bold?</b> & <script>window.pwned = 2</script>",
    ]
    driver = page.driver
    assert driver.execute_script("return document.querySelectorAll('#messages img, b').length") == 0
    assert driver.execute_script("return window.pwned === undefined")
    assert page.console_errors() == []


def test_server_restart_reconnects_without_gap_or_duplicate(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "terminal")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    page.wait_status("online")
    for i in range(3):
        terminal.chat(f"before {i}")
    page.wait_messages(3)
    page.record_frames()

    assert server.stop() == 0
    page.wait_status("offline")
    page.send("typed while the server was down")
    assert page.pending() == 1

    again = trio_servers.start(port=server.port, http_port=server.http_port or 0)
    terminal = terminals(again, "terminal")
    for i in range(3):
        terminal.chat(f"after {i}")  # likely before the page is back: it must catch up
    page.wait_status("online")
    shown = page.wait_messages(7)
    wait_for("the pending message to be confirmed", lambda: page.pending() == 0)
    shown = page.messages()
    texts = [m["text"] for m in shown]
    assert [m["seq"] for m in shown] == list(range(1, 8))  # no gap, no duplicate
    assert texts[:3] == ["before 0", "before 1", "before 2"]
    assert sorted(texts[3:]) == sorted(
        ["after 0", "after 1", "after 2", "typed while the server was down"]
    )
    assert [t for t in texts if t.startswith("after")] == ["after 0", "after 1", "after 2"]
    assert terminal.wait_messages(7)[-1] == texts[-1]  # stored once: the terminal saw 7 too

    hellos = page.sent_frames("hello")
    assert hellos and all(h["since"] == 3 for h in hellos)  # resumed after the last seen
    sends = page.sent_frames("send")
    assert {(f["text"], f["id"]) for f in sends} == {(sends[0]["text"], sends[0]["id"])}


def test_login_is_remembered_only_when_asked(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = open_page(browsers, server)
    page.login("alice", "wrong" * 26, remember=True)
    wait_for(
        "the login form to say the key is wrong",
        lambda: "key is wrong" in page.driver.find_element("id", "login-error").text,
    )
    assert page.driver.execute_script("return localStorage.length") == 0  # forgotten
    page.driver.find_element("id", "key").send_keys(server.key + "\n")
    page.wait_status("online")
    page.driver.refresh()
    page.wait_status("online")  # remembered: no form this time

    other = open_page(browsers, server)
    other.login("bob", server.key)  # box not ticked
    other.wait_status("online")
    assert other.driver.execute_script("return localStorage.length") == 0
    other.driver.refresh()
    other.wait_visible("login")


def test_screenshots_of_the_page(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "bob")
    terminal.chat("Morning! Is the build green again?")
    terminal.chat(INJECTION)
    desktop = open_page(browsers, server)
    desktop.wait_visible("login")
    login = desktop.screenshot("web-login.png")
    desktop.login("alice", server.key)
    desktop.wait_status("online")
    desktop.send("Yes, all green. Long line test: " + "lorem ipsum dolor sit amet " * 8)
    phone = open_page(browsers, server, width=390, height=844, mobile=True, dark=True)
    phone.login("carol", server.key)
    phone.wait_status("online")
    phone.send("Looks fine on my phone, ça marche")
    for page in (desktop, phone):
        page.wait_messages(4)
        wait_for("sends to be confirmed", lambda page=page: page.pending() == 0)
    for path in (
        login,
        desktop.screenshot("web-desktop-light.png"),
        phone.screenshot("web-phone-dark.png"),
    ):
        assert path.stat().st_size > 10_000, path
    assert desktop.console_errors() == [] and phone.console_errors() == []
