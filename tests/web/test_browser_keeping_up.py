"""Keeping up with the room in the browser (issue 13), in headless Chromium against real servers.

Unread messages (marker, jump button, tab title), links, grouping, the composer's Enter and
Shift+Enter, `/me`, the empty room, the no-JavaScript notice, the reconnect countdown, and
mention notifications. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.real_server import ServerFactory
from tests.web.browser import ARTIFACTS, wait_for
from tests.web.test_browser import Terminals, open_page, room_with_messages, signed_in

PHONE = {"width": 390, "height": 844, "mobile": True}


def test_an_empty_room_says_so_until_the_first_message(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice", **PHONE, dark=True)
    wait_for("the empty-room text", lambda: page.shown("empty"))
    assert "No messages yet" in page.driver.find_element(By.ID, "empty").text
    page.screenshot("web-empty-room-phone-dark.png")
    terminals(server, "bob").chat("first!")
    page.wait_messages(1)
    wait_for("the empty-room text to go", lambda: not page.shown("empty"))


def test_a_room_with_history_is_not_called_empty(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    terminals(server, "bob").chat("an old message")
    page = open_page(browsers, server)
    page.login("alice", server.key)
    page.wait_messages(1)
    assert not page.shown("empty")


def test_without_javascript_the_page_says_it_needs_it(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start()
    driver = browsers()
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    assert server.url is not None
    driver.get(server.url)
    notice = driver.find_element(By.ID, "noscript")
    assert notice.is_displayed()
    assert "needs JavaScript" in notice.text
    assert not driver.find_element(By.ID, "login").is_displayed()
    assert driver.find_element(By.ID, "status").text == ""  # not a misleading "signed out"
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "web-no-javascript.png"))


def test_links_are_clickable_only_for_http_and_https(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    bob = terminals(server, "bob")
    bob.chat("docs at https://example.org/a_(b)?q=1&r=<2>. and (http://example.com/x), ok?")
    bob.chat("javascript:alert(1) ftp://example.org data:text/html,x <a href=javascript:x>no</a>")
    bob.chat("HTTPS://EXAMPLE.NET/Up and https:// alone")
    page.wait_messages(3)
    links = page.script(
        """return Array.from(document.querySelectorAll('#messages a'), a => ({
            text: a.textContent, href: a.getAttribute('href'), rel: a.rel, target: a.target,
            seq: Number(a.closest('li').dataset.seq), attrs: a.getAttributeNames().sort()}))""",
    )
    assert [(link["seq"], link["text"]) for link in links] == [
        (1, "https://example.org/a_(b)?q=1&r="),
        (1, "http://example.com/x"),
        (3, "HTTPS://EXAMPLE.NET/Up"),
    ]
    assert links[0]["href"] == "https://example.org/a_(b)?q=1&r="
    assert links[2]["href"] == "https://example.net/Up"
    for link in links:
        assert link["rel"] == "noopener noreferrer"
        assert link["target"] == "_blank"
        assert link["attrs"] == ["href", "rel", "target"]
    # The text around the links, and everything in the second message, is text as sent.
    assert page.texts() == [
        "docs at https://example.org/a_(b)?q=1&r=<2>. and (http://example.com/x), ok?",
        "javascript:alert(1) ftp://example.org data:text/html,x <a href=javascript:x>no</a>",
        "HTTPS://EXAMPLE.NET/Up and https:// alone",
    ]
    elements = page.script("return document.querySelectorAll('#messages li .text *').length")
    assert elements == 3  # the three links, nothing else
    assert page.console_errors() == []


def test_messages_in_a_row_from_one_sender_are_grouped(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    bob = terminals(server, "bob")
    page = signed_in(browsers, server, "alice")
    for text in ("one", "two", "three"):
        bob.chat(text)
    page.wait_messages(3)
    page.send("mine")
    page.wait_messages(4)
    bob.chat("four")
    page.wait_messages(5)
    grouped = page.script(
        "return Array.from(document.querySelectorAll('#messages li.message'),"
        " li => li.classList.contains('cont'))",
    )
    assert grouped == [False, True, True, False, False]


def test_unread_messages_marker_jump_button_and_title(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server, bob = room_with_messages(trio_servers, terminals, 40, "--fsync", "never")
    page = open_page(browsers, server, height=600)
    page.login("alice", server.key)
    page.wait_messages(40)
    page.wait_status("online")
    assert page.driver.title == "papaya chat"
    page.script("document.getElementById('log').scrollTop = 0")  # reading the backlog

    for i in range(3):
        bob.chat(f"new {i}")
    page.wait_messages(43)
    wait_for("the title to count 3 unread", lambda: page.driver.title == "(3) papaya chat")
    jump = page.driver.find_element(By.ID, "jump")
    assert jump.is_displayed() and jump.text == "3 new messages ↓"
    after_marker = page.script(
        "const m = document.querySelector('#messages li.new-marker');"
        " return m && m.nextElementSibling.querySelector('.text').textContent",
    )
    assert after_marker == "new 0"
    live = page.script("return document.getElementById('jump').parentElement.ariaLive")
    assert live == "polite"
    page.screenshot("web-new-messages-desktop.png")

    jump.click()
    wait_for("the title to lose its count", lambda: page.driver.title == "papaya chat")
    assert not jump.is_displayed()
    at_bottom = "const l = document.getElementById('log');"
    at_bottom += " return l.scrollHeight - l.scrollTop - l.clientHeight < 2"
    assert page.script(at_bottom)
    bob.chat("while at the bottom")
    page.wait_messages(44)
    assert page.driver.title == "papaya chat"  # read as it came in
    assert page.script("return document.querySelectorAll('#messages li.new-marker').length") == 1

    page.script("document.getElementById('log').scrollTop = 0")
    bob.chat("a second batch")
    page.wait_messages(45)
    wait_for("the title to count 1", lambda: page.driver.title == "(1) papaya chat")
    markers = page.script(
        "return Array.from(document.querySelectorAll('#messages li.new-marker'),"
        " m => m.nextElementSibling.querySelector('.text').textContent)"
    )
    assert markers == ["a second batch"]  # one line, above the newest unread


def test_own_messages_are_never_unread(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server, _bob = room_with_messages(trio_servers, terminals, 30, "--fsync", "never")
    page = open_page(browsers, server, height=500)
    page.login("alice", server.key)
    page.wait_messages(30)
    page.script("document.getElementById('log').scrollTop = 0")
    page.send("my own words")
    page.wait_messages(31)
    assert page.driver.title == "papaya chat"
    assert not page.shown("jump")


def test_enter_sends_and_shift_enter_starts_a_new_line(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    page.record_frames()
    box = page.driver.find_element(By.ID, "text")
    box.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "line two")
    assert box.get_attribute("value") == "line one\nline two"
    assert box.get_attribute("rows") == "2"
    assert page.sent_frames("send") == []
    box.send_keys(Keys.ENTER)
    wait_for("the message to go out", lambda: page.sent_frames("send"))
    sends = page.sent_frames("send")
    assert [f["text"] for f in sends] == ["line one\nline two"]  # one message, not two
    assert box.get_attribute("value") == ""


def test_slash_me_sends_an_action(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    page.record_frames()
    page.send("/me waves back")
    page.send("/me")  # nothing to do: explained, not sent, kept in the box
    box = page.driver.find_element(By.ID, "text")
    assert box.get_attribute("value") == "/me"
    assert "/me waves" in page.driver.find_element(By.ID, "notice").text
    box.clear()
    page.send("//me is not a command")
    wait_for("two sends", lambda: len(page.sent_frames("send")) == 2)
    sends = page.sent_frames("send")
    assert [(f["text"], f.get("action")) for f in sends] == [
        ("waves back", True),
        ("/me is not a command", None),
    ]


def test_reconnect_countdown_counts_down_and_retry_now_reconnects(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    assert not page.shown("offline")
    assert server.stop() == 0
    page.wait_status("offline")

    def countdown() -> int | None:
        if not page.shown("offline"):
            return None
        text = page.driver.find_element(By.ID, "countdown").text
        match = re.fullmatch(r"Offline, retrying in (\d+) s", text)
        return int(match.group(1)) if match else None

    # Failed attempts back off; wait for a wait of 3 s or more, then watch it count down.
    def below(limit: int) -> Callable[[], int | None]:
        return lambda: c if (c := countdown()) and c < limit else None

    start = wait_for(
        "a countdown from 3 s", lambda: c if (c := countdown()) and c >= 3 else None, 40
    )
    seen = wait_for("the countdown to go down", below(start))
    assert 1 <= seen < start
    page.screenshot("web-reconnect-countdown.png")

    again = trio_servers.start(port=server.port, http_port=server.http_port or 0)
    terminals(again, "bob").chat("back up")
    left = countdown()
    assert left is not None and left >= 1  # the timer would not have fired yet
    page.driver.find_element(By.ID, "retry").click()
    assert page.status in ("connecting", "online")  # at once, not when the countdown ends
    page.wait_status("online")
    assert not page.shown("offline")
    assert page.wait_messages(1)[0]["text"] == "back up"


def test_mention_notifications_only_after_opting_in(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    # Stand-ins for the browser's notifications and focus (headless has neither for real).
    page.script(
        """window.shownNotes = []; window.asked = 0;
        window.Notification = class {
            constructor(title, options) { window.shownNotes.push([title, options.body]); }
            static requestPermission() { window.asked += 1; this.permission = 'granted';
                                         return Promise.resolve('granted'); }
        };
        window.Notification.permission = 'default';
        document.hasFocus = () => false;""",
    )
    bob = terminals(server, "bob")
    bob.chat("alice: before opting in")
    page.wait_messages(1)
    assert page.script("return window.shownNotes") == []
    assert page.script("return window.asked") == 0  # never asked without a click

    bell = page.driver.find_element(By.ID, "notify")
    assert bell.get_attribute("aria-pressed") == "false"
    bell.click()
    wait_for("the bell to be on", lambda: bell.get_attribute("aria-pressed") == "true")
    assert page.script("return window.asked") == 1
    bob.chat("hey @Alice, look")
    bob.chat("nothing for malice or alice_b")
    bob.chat("plain talk")
    page.wait_messages(4)
    assert page.script("return window.shownNotes") == [["bob mentioned you", "hey @Alice, look"]]
    mentioned = page.script(
        "return Array.from(document.querySelectorAll('#messages li.message'),"
        " li => li.classList.contains('mention'))",
    )
    assert mentioned == [True, True, False, False]


def test_messages_that_come_while_the_page_is_hidden_count_in_the_title(
    trio_servers: ServerFactory, browsers: Callable[..., Any], terminals: Terminals
) -> None:
    server = trio_servers.start()
    bob = terminals(server, "bob")
    page = signed_in(browsers, server, "alice")
    # Another tab is in front (headless Chromium has no real tabs to switch).
    page.script("Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")
    bob.chat("while you were away")
    bob.chat("and again")
    page.wait_messages(2)
    wait_for("the title to count 2", lambda: page.driver.title == "(2) papaya chat")
    page.script(
        """Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));""",
    )
    wait_for("the title to lose its count", lambda: page.driver.title == "papaya chat")
    first_unread = page.script(
        "return document.querySelector('li.new-marker ~ li.message .text').textContent"
    )
    assert first_unread == "while you were away"  # the line shows where the unread ones began


def test_a_message_over_the_line_limit_is_not_sent_and_stays_in_the_box(
    trio_servers: ServerFactory, browsers: Callable[..., Any]
) -> None:
    server = trio_servers.start()
    page = signed_in(browsers, server, "alice")
    page.record_frames()
    too_many = "\n".join(f"line {i}" for i in range(101))
    page.script(f"document.getElementById('text').value = {json.dumps(too_many)}")
    box = page.driver.find_element(By.ID, "text")
    box.send_keys(Keys.END, Keys.ENTER)
    notice = page.driver.find_element(By.ID, "notice")
    wait_for("the limit to be explained", lambda: "101 lines; the limit is 100" in notice.text)
    assert box.get_attribute("value") == too_many
    assert page.sent_frames("send") == []
    assert page.pending() == 0
