"""Who is here, names nobody can steal, and the whole history, in the browser (issue 13).

Headless Chromium against real servers: the member list and collapsed join/leave lines,
the phone's member sheet, typing hints, scroll-back paging that keeps the reader's place and
shows where the room begins, name_taken and bad_token on the login form, `/me` actions,
multi-line messages, and messages from the papayaChat dialect. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.real_server import RunningServer, ServerFactory
from tests.web.browser import WAIT, ChatPage, wait_for
from tests.web.test_browser import Terminals, open_page, room_with_messages, signed_in

PHONE = {"width": 390, "height": 844, "mobile": True}
PapayaClients = Callable[[RunningServer], socket.socket]


@pytest.fixture
def papaya_clients() -> Iterator[PapayaClients]:
    """Connect papayaChat-dialect clients (the original C client's protocol); closed afterwards."""
    started: list[socket.socket] = []

    def connect(server: RunningServer) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        started.append(sock)
        sock.sendall(server.key.encode())
        return sock

    yield connect
    for sock in started:
        sock.close()


def members(page: ChatPage) -> list[str]:
    shown: list[str] = page.script(
        "return Array.from(document.querySelectorAll('#member-list li'), li => li.textContent)",
    )
    return shown


def presence_lines(page: ChatPage) -> list[str]:
    lines: list[str] = page.script(
        "return Array.from(document.querySelectorAll('#messages li.presence'),"
        " li => li.textContent)",
    )
    return lines


def test_member_list_and_collapsed_join_and_leave_lines(
    trio_servers: ServerFactory,
    browsers: Callable[..., Any],
    terminals: Terminals,
    papaya_clients: PapayaClients,
) -> None:
    server = trio_servers.start()
    alice = signed_in(browsers, server, "alice")
    wait_for("alice alone", lambda: members(alice) == ["alice(you)unverified"])
    assert alice.driver.find_element(By.ID, "members").is_displayed()  # a panel on desktop

    bob = signed_in(browsers, server, "bob")
    carol = terminals(server, "carol")
    papaya_clients(server)
    everyone = ["alice(you)unverified", "bobunverified", "carolunverified", "papayaChat clients"]
    wait_for("four in alice's list", lambda: members(alice) == everyone)
    assert alice.driver.find_element(By.ID, "members-count").text == "4"
    assert presence_lines(alice) == ["bob, carol, a papayaChat client joined"]

    carol.close()
    wait_for("carol to leave", lambda: "carolunverified" not in members(alice))
    wait_for(
        "one line for the run",
        lambda: presence_lines(alice) == ["bob, carol, a papayaChat client joined · carol left"],
    )
    bob.send("see you")
    alice.wait_messages(1)
    bob.driver.get("about:blank")  # bob closes the tab
    left = ["alice(you)unverified", "papayaChat clients"]
    wait_for("bob to leave", lambda: members(alice) == left)
    wait_for("a new line after the message", lambda: presence_lines(alice)[1:] == ["bob left"])
    shown = alice.script(
        "return Array.from(document.querySelectorAll('#messages > li'), li => li.className)",
    )
    assert shown == ["presence", "day", "message", "presence"]
    names = alice.driver.find_elements(By.CSS_SELECTOR, "#member-list .user.unverified")
    assert names and all(n.tag_name == "bdi" for n in names)
    alice.screenshot("web-members-desktop-light.png")
    assert alice.console_errors() == []


def test_member_list_is_a_sheet_on_phones(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminals(server, "bob").chat("hello phone")
    phone = signed_in(browsers, server, "carol", **PHONE, dark=True)
    toggle = phone.driver.find_element(By.ID, "members-toggle")
    sheet = phone.driver.find_element(By.ID, "members")
    assert toggle.is_displayed() and not sheet.is_displayed()
    assert toggle.get_attribute("aria-expanded") == "false"
    wait_for("two online", lambda: toggle.text == "People 2")
    toggle.click()
    assert sheet.is_displayed() and toggle.get_attribute("aria-expanded") == "true"
    rect = phone.script("return document.getElementById('members').getBoundingClientRect()")
    assert rect["left"] == 0 and rect["width"] == 390 and rect["bottom"] == 844  # the sheet
    phone.screenshot("web-members-phone-dark.png")
    phone.driver.find_element(By.ID, "members-close").click()
    assert not sheet.is_displayed()
    assert phone.driver.switch_to.active_element.get_attribute("id") == "members-toggle"
    toggle.click()
    assert sheet.is_displayed()
    phone.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not sheet.is_displayed()


def test_typing_hint_is_shown_and_sent_at_most_every_3_seconds(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start()
    alice = open_page(browsers, server, dark=True)
    alice.login("alice", server.key)
    bob = open_page(browsers, server)
    bob.login("bob", server.key)
    alice.wait_status("online")
    bob.wait_status("online")
    bob.record_frames()
    box = bob.driver.find_element(By.ID, "text")
    for part in ("he", "ll", "o a", "lice"):
        box.send_keys(part)
    typing = bob.sent_frames("typing")
    assert typing == [{"type": "typing"}]  # one hint for a burst of keystrokes
    hint = alice.driver.find_element(By.ID, "typing")
    wait_for("alice to see bob typing", lambda: hint.text == "bob is typing…")
    assert bob.driver.find_element(By.ID, "typing").text == ""  # not about yourself
    alice.screenshot("web-typing-desktop-dark.png")
    box.send_keys(Keys.ENTER)
    alice.wait_messages(1)
    wait_for("the hint to go with bob's message", lambda: hint.text == "")


def test_scrolling_up_loads_older_pages_in_place_down_to_the_start(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server, _bob = room_with_messages(trio_servers, terminals, 130, "--fsync", "never")
    page = signed_in(browsers, server, "alice")
    assert [m["seq"] for m in page.wait_messages(50)] == list(range(81, 131))
    page.record_frames()
    top_text = page.driver.find_element(By.ID, "top")
    assert "start of the room" not in top_text.text

    # Scroll to the top: the place of the message that was first stays where it was.
    before = page.script(
        """const log = document.getElementById('log'); log.scrollTop = 0;
        return document.querySelector('li[data-seq="81"]').getBoundingClientRect().top""",
    )
    page.wait_messages(100)
    after = page.script(
        "return document.querySelector('li[data-seq=\"81\"]').getBoundingClientRect().top"
    )
    assert abs(after - before) <= 1
    assert page.script("return document.getElementById('log').scrollTop") > 500
    page.screenshot("web-scrollback-desktop.png")

    page.script("document.getElementById('log').scrollTop = 0")
    wait_for("the start of the room", lambda: "start of the room" in top_text.text)
    shown = page.messages()
    assert [m["seq"] for m in shown] == list(range(1, 131))  # no gap, no duplicate
    assert [m["text"] for m in shown[:2]] == ["message 1", "message 2"]
    assert page.script("return document.querySelectorAll('#messages li.day').length") == 1
    requests = page.sent_frames("history")
    assert [(r["before"], r["limit"]) for r in requests] == [(81, 50), (31, 50)]
    assert page.driver.title == "papaya chat"  # old messages are not unread
    page.script("document.getElementById('log').scrollTop = 0")
    page.screenshot("web-start-of-room-desktop.png")
    assert page.console_errors() == []


def test_a_short_history_loads_until_the_page_can_scroll(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server, _bob = room_with_messages(trio_servers, terminals, 10, "--history", "3")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    # 3 messages do not fill the screen, so nobody could scroll up for the rest.
    assert [m["seq"] for m in page.wait_messages(10)] == list(range(1, 11))
    top = page.driver.find_element(By.ID, "top")
    wait_for("the start of the room", lambda: "start of the room" in top.text)


def test_a_server_that_sends_no_history_on_connect_still_has_it_all(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server, bob = room_with_messages(trio_servers, terminals, 60, "--history", "0")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    assert [m["seq"] for m in page.wait_messages(50)][-1] == 60  # the newest page, unasked
    bob.chat("live")
    assert page.wait_messages(51)[-1]["text"] == "live"
    page.script("document.getElementById('log').scrollTop = 0")
    top = page.driver.find_element(By.ID, "top")
    wait_for("the start of the room", lambda: "start of the room" in top.text)
    assert [m["seq"] for m in page.messages()] == list(range(1, 62))


def test_a_name_in_use_is_refused_on_the_login_form(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminals(server, "alice")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    error = page.driver.find_element(By.ID, "login-error")
    wait_for("the login form to say the name is taken", lambda: "in use" in error.text)
    assert page.driver.find_element(By.ID, "login").is_displayed()
    assert page.driver.find_element(By.ID, "key").get_attribute("value") == server.key  # kept
    user = page.driver.find_element(By.ID, "user")
    assert page.driver.switch_to.active_element == user
    page.screenshot("web-name-taken.png")
    user.send_keys(Keys.CONTROL, "a")
    user.send_keys("alice2" + Keys.ENTER)
    page.wait_status("online")
    assert page.messages() == []


def add_account(server: RunningServer, name: str) -> str:
    """`papaya-trio user add NAME` for the server's data folder; the new token."""
    command = ["user", "--data-dir", str(server.data_dir), "add", name]
    added = subprocess.run(
        [sys.executable, "-m", "papaya_trio", *command],
        capture_output=True,
        text=True,
        check=True,
    )
    return added.stdout.strip()


def test_with_accounts_only_the_token_is_needed(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start("--auth", "accounts")
    token = add_account(server, "dana")
    page = open_page(browsers, server)
    page.wait_visible("login")
    page.driver.find_element(By.ID, "user").send_keys("dana")
    page.driver.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
    wait_for(
        "verified", lambda: page.driver.find_element(By.ID, "status").text == "online, verified"
    )


def test_accounts_token_field_and_bad_token(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start("--auth", "both")
    token = add_account(server, "alice")
    page = open_page(browsers, server)
    page.wait_visible("login")
    driver = page.driver
    driver.find_element(By.ID, "user").send_keys("alice")
    driver.find_element(By.ID, "key").send_keys(server.key)
    driver.find_element(By.ID, "token").send_keys("not-the-token" + Keys.ENTER)
    error = driver.find_element(By.ID, "login-error")
    wait_for("the login form to refuse the token", lambda: "token is not right" in error.text)
    assert driver.switch_to.active_element.get_attribute("id") == "token"
    assert driver.find_element(By.ID, "token").get_attribute("value") == ""
    assert driver.find_element(By.ID, "key").get_attribute("value") == server.key  # kept
    page.screenshot("web-bad-token.png")

    driver.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
    wait_for("verified", lambda: driver.find_element(By.ID, "status").text == "online, verified")
    wait_for("the tick", lambda: page.script("return !!document.querySelector('.verified')"))
    page.send("signed by my token")
    assert page.wait_messages(1)[0]["own"]
    name = driver.find_element(By.CSS_SELECTOR, "#messages .user")
    assert "unverified" not in (name.get_attribute("class") or "")


def test_me_actions_and_multi_line_messages(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminal = terminals(server, "tom")
    alice = open_page(browsers, server)
    alice.login("alice", server.key)
    bob = open_page(browsers, server, **PHONE)
    bob.login("bob", server.key)
    alice.wait_status("online")
    bob.wait_status("online")
    alice.send("/me waves")
    box = alice.driver.find_element(By.ID, "text")
    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "second line" + Keys.ENTER)
    alice.wait_messages(2)
    terminal.send(type="send", text="waves back", action=True, id="tom-1")
    for page in (alice, bob):
        page.wait_messages(3)
        actions = page.script(
            "return Array.from(document.querySelectorAll('#messages li.action .body'),"
            " b => b.textContent)",
        )
        assert actions == ["* alice waves", "* tom waves back"]
        assert page.texts()[1] == "first line\nsecond line"
        text = page.driver.find_elements(By.CSS_SELECTOR, "#messages li.message .text")[1]
        assert text.value_of_css_property("white-space") == "pre-wrap"
        assert text.size["height"] > 1.8 * float(text.value_of_css_property("font-size")[:-2])
        assert page.console_errors() == []
    terminal.wait_messages(3)
    seen = [(m["user"], m["text"], m.get("action")) for m in terminal.seen]
    assert seen == [
        ("alice", "waves", True),
        ("alice", "first line\nsecond line", None),
        ("tom", "waves back", True),
    ]
    bob.screenshot("web-actions-multiline-phone-light.png")


def test_papaya_dialect_messages_are_marked(
    trio_servers: ServerFactory, browsers: Callable[..., Any], papaya_clients: PapayaClients
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    papaya_clients(server).sendall(b"mallory: hello from the C client\n")
    shown = page.wait_messages(1)
    assert (shown[0]["user"], shown[0]["text"]) == ("mallory", "hello from the C client")
    tag = page.driver.find_element(By.CSS_SELECTOR, "#messages li.papaya .tag")
    assert tag.text == "papayaChat"
    assert "papayaChat dialect" in (tag.get_attribute("title") or "")


def test_a_crowd_joining_makes_one_short_line(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    crowd = [f"guest{i}" for i in range(8)]
    for name in crowd:
        terminals(server, name)
    wait_for("nine in the list", lambda: len(members(page)) == 9)
    assert presence_lines(page) == ["guest0, guest1, guest2 and 5 others joined"]
    assert page.driver.find_element(By.ID, "members-count").text == "9"
