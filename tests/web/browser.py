"""Headless Chromium for the browser tests, driven with Selenium and Debian's chromedriver.

Nothing is downloaded at test time: the browser and its driver are the Debian packages
`chromium` and `chromium-driver` (or whatever PAPAYA_CHROMIUM and PAPAYA_CHROMEDRIVER point
at). If they are missing the tests fail with a message that says how to install them.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported by `launch`
    webdriver = None  # type: ignore[assignment]

CHROMIUM = os.environ.get("PAPAYA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PAPAYA_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "install them with: apt-get install -y chromium chromium-driver"
WAIT = 20.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

T = TypeVar("T")
# Keeps a copy of every frame the page sends (WebDriver's scripts are not bound by the CSP).
RECORD_FRAMES = """
    window.sentFrames = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
        window.sentFrames.push(data);
        return send.call(this, data);
    };
"""
CLIENT_NUMBERS = itertools.count(1)


def launch(
    profile_root: Path,
    width: int = 1100,
    height: int = 760,
    *,
    mobile: bool = False,
    dark: bool = False,
    flags: Sequence[str] = (),
) -> Any:
    """A fresh headless Chromium with its own profile folder; fails the test if there is none.

    `flags` are added to Chromium's command line."""
    if webdriver is None:
        pytest.fail("the browser tests need Selenium: pip install -e '.[dev]'")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.fail(f"the browser tests need {path} (Debian package {package}); {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=profile_root)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--lang=en-US",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        *flags,
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    if mobile:  # headless windows have a minimum width; emulate the phone's screen instead
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    if dark:
        feature = {"name": "prefers-color-scheme", "value": "dark"}
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [feature]})
    return driver


def wait_for(what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll `check` until it returns something truthy; fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class ChatPage:
    """One browser tab on the chat page."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url
        driver.get(url)

    def login(self, user: str, key: str, *, remember: bool = False) -> None:
        self.wait_visible("login")
        self.driver.find_element(By.ID, "user").send_keys(user)
        if remember:
            self.driver.find_element(By.ID, "remember").click()
        self.driver.find_element(By.ID, "key").send_keys(key + Keys.ENTER)

    def wait_visible(self, element_id: str) -> None:
        try:
            WebDriverWait(self.driver, WAIT).until(
                lambda d: d.find_element(By.ID, element_id).is_displayed()
            )
        except TimeoutException:
            pytest.fail(f"#{element_id} never showed")

    def send(self, text: str) -> None:
        self.driver.find_element(By.ID, "text").send_keys(text + Keys.ENTER)

    @property
    def status(self) -> str:
        return str(self.driver.find_element(By.ID, "status").get_attribute("data-state"))

    def wait_status(self, state: str) -> None:
        wait_for(f"status {state!r} (it is {self.status!r})", lambda: self.status == state)

    def messages(self) -> list[dict[str, Any]]:
        """What the page shows, oldest first."""
        shown: list[dict[str, Any]] = self.driver.execute_script(
            """return Array.from(document.querySelectorAll('#messages li.message'), li => ({
                seq: Number(li.dataset.seq),
                time: li.querySelector('time').getAttribute('datetime'),
                user: li.querySelector('.user').textContent,
                text: li.querySelector('.text').textContent,
                own: li.classList.contains('own'),
            }))"""
        )
        return shown

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages()]

    def wait_messages(self, count: int) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            shown = self.messages()
            return shown if len(shown) >= count else None

        return wait_for(f"{count} messages on the page", enough)

    def pending(self) -> int:
        count: int = self.driver.execute_script(
            "return document.querySelectorAll('#outbox li').length"
        )
        return count

    def script(self, code: str) -> Any:
        """Run JavaScript in the page and return its result."""
        return self.driver.execute_script(code)

    def shown(self, element_id: str) -> bool:
        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def record_frames(self) -> None:
        """From now on keep a copy of every frame the page sends (see `sent_frames`)."""
        self.script(RECORD_FRAMES)

    def sent_frames(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The frames sent since `record_frames`, of type `kind` if given."""
        frames = [json.loads(f) for f in self.script("return window.sentFrames")]
        return [f for f in frames if kind is None or f["type"] == kind]

    def console_errors(self) -> list[str]:
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE"
        ]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        assert self.driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
        return path


class TcpClient:
    """A blocking native-dialect client, for the terminal user in the browser tests."""

    def __init__(self, port: int, user: str, key: str, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.file = self.sock.makefile("rwb")
        self.seen: list[dict[str, Any]] = []
        # Ids must not repeat for a user, even across connections: a repeat is a resend.
        self._prefix = f"t{next(CLIENT_NUMBERS)}"
        self._ids = 0
        self.send(type="hello", key=key, user=user)
        self.welcome = self.receive()
        assert self.welcome["type"] == "welcome", self.welcome

    def send(self, **obj: Any) -> None:
        self.file.write(json.dumps(obj).encode() + b"\n")
        self.file.flush()

    def receive(self) -> dict[str, Any]:
        """The next object, skipping presence and typing notices."""
        while True:
            line = self.file.readline()
            assert line, "the server closed the connection"
            obj: dict[str, Any] = json.loads(line)
            if obj["type"] == "message":
                self.seen.append(obj)
            if obj["type"] not in ("presence", "typing"):
                return obj

    def chat(self, text: str) -> int:
        """Send and wait for the ack; return the seq."""
        self._ids += 1
        self.send(type="send", text=text, id=f"{self._prefix}-{self._ids}")
        while (obj := self.receive())["type"] != "ack":
            assert obj["type"] in ("message", "presence", "typing"), obj
        seq: int = obj["seq"]
        return seq

    def wait_messages(self, count: int) -> list[str]:
        while len(self.seen) < count:
            self.receive()
        return [m["text"] for m in self.seen]

    def close(self) -> None:
        self.file.close()
        self.sock.close()
