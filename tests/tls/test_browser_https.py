"""The browser client over https:// and wss:// in a real headless Chromium that trusts the
test certificate, and names and texts that cannot reorder the page around them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.real_server import RunningServer
from tests.tls.conftest import Pki
from tests.web.browser import ChatPage, TcpClient, launch


def spki_hash(pki: Pki) -> str:
    """Chromium's pin of the server certificate: base64 SHA-256 of its public key info."""
    certificate = x509.load_der_x509_certificate(pki.leaf_der)
    info = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(info).digest()).decode()


@pytest.fixture
def trusting_browsers(tmp_path: Path, pki: Pki) -> Iterator[Callable[[], Any]]:
    """Headless Chromium instances that accept the test server's certificate (pinned by its
    public key, the one certificate they make an exception for)."""
    started: list[Any] = []

    def start() -> Any:
        driver = launch(tmp_path, flags=[f"--ignore-certificate-errors-spki-list={spki_hash(pki)}"])
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


# Keeps the URL of every WebSocket the page opens (WebDriver's scripts are not bound by the CSP).
RECORD_SOCKETS = """
    window.socketUrls = [];
    const Original = window.WebSocket;
    window.WebSocket = function (url, ...rest) {
        window.socketUrls.push(String(url));
        return new Original(url, ...rest);
    };
    window.WebSocket.prototype = Original.prototype;
    Object.assign(window.WebSocket, Original);
"""


def test_the_page_over_https_chats_over_wss(
    tls_server: RunningServer, pki: Pki, trusting_browsers: Callable[[], Any]
) -> None:
    assert tls_server.url is not None and tls_server.url.startswith("https://")
    terminal = TcpClient(tls_server.port, "terminal", tls_server.key, pki.client_context())
    try:
        page = ChatPage(trusting_browsers(), tls_server.url)
        page.wait_visible("login")
        page.driver.execute_script(RECORD_SOCKETS)
        page.login("alice", tls_server.key)
        page.wait_status("online")
        page.send("hello over wss")
        assert terminal.wait_messages(1) == ["hello over wss"]
        terminal.chat("hello from the terminal over TLS")
        shown = page.wait_messages(2)
        assert [m["text"] for m in shown] == ["hello over wss", "hello from the terminal over TLS"]
        assert page.driver.execute_script("return window.socketUrls") == [
            f"wss://127.0.0.1:{tls_server.http_port}/ws"
        ]
        assert page.console_errors() == []
    finally:
        terminal.close()


def test_names_and_texts_are_isolated(
    tls_server: RunningServer, pki: Pki, trusting_browsers: Callable[[], Any]
) -> None:
    terminal = TcpClient(tls_server.port, "مريم", tls_server.key, pki.client_context())
    try:
        terminal.chat("\u202egnp.exe")  # RIGHT-TO-LEFT OVERRIDE, never closed
        terminal.chat("سلام")
        page = ChatPage(trusting_browsers(), tls_server.url or "")
        page.login("alice", tls_server.key)
        page.wait_messages(2)
        shown = page.driver.execute_script(
            """return Array.from(document.querySelectorAll('#messages li.message'), li => ({
                user: li.querySelector('.user').tagName,
                dir: li.querySelector('.text').dir,
                isolated: getComputedStyle(li.querySelector('.text')).unicodeBidi,
            }))"""
        )
        assert shown == [{"user": "BDI", "dir": "auto", "isolated": "isolate"}] * 2
        page.screenshot("web-bidi-isolated.png")
    finally:
        terminal.close()
