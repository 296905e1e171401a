"""A real `papaya-trio serve` with TLS: both ports encrypted, the papayaChat port in clear only
where asked, certificates re-read on SIGHUP, and plaintext refused off loopback."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.real_server import RunningServer, ServerFactory
from tests.tls.conftest import Pki, make_pki
from tests.web.browser import TcpClient

WAIT = 15.0


def certificate(client: TcpClient) -> bytes | None:
    """The certificate the server showed `client`, DER."""
    assert isinstance(client.sock, ssl.SSLSocket)
    return client.sock.getpeercert(binary_form=True)


def serve(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """Run `papaya-trio serve` expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "papaya_trio", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for_log(server: RunningServer, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in server.log:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{server.log}"
        time.sleep(0.02)


def test_native_client_over_tls(tls_server: RunningServer, pki: Pki) -> None:
    alice = TcpClient(tls_server.port, "alice", tls_server.key, pki.client_context())
    try:
        assert certificate(alice) == pki.leaf_der
        assert isinstance(alice.sock, ssl.SSLSocket)
        assert alice.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert alice.chat("over TLS") == 1
    finally:
        alice.close()
    assert "listening tcp 127.0.0.1:" in tls_server.log and "(TLS)" in tls_server.log


def test_a_client_in_clear_gets_nothing(tls_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=WAIT) as sock:
        sock.sendall(json.dumps({"type": "hello", "key": tls_server.key, "user": "x"}).encode())
        sock.sendall(b"\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert b"welcome" not in received
    assert b"{" not in received  # the server never answers a plaintext client in clear


def test_https_page_and_wss_chat(tls_server: RunningServer, pki: Pki) -> None:
    assert tls_server.url == f"https://127.0.0.1:{tls_server.http_port}/"
    context = pki.client_context()
    with urllib.request.urlopen(tls_server.url, timeout=WAIT, context=context) as reply:
        assert reply.status == 200
        assert b'<script src="app.js"' in reply.read()

    async def chat() -> list[str]:
        url = f"wss://127.0.0.1:{tls_server.http_port}/ws"
        async with open_websocket_url(url, ssl_context=context) as ws:
            await ws.send_message(json.dumps({"type": "hello", "key": tls_server.key, "user": "w"}))
            welcome = json.loads(await ws.get_message())
            await ws.send_message(json.dumps({"type": "send", "text": "over wss", "id": "w1"}))
            kinds = [json.loads(await ws.get_message())["type"] for _ in range(2)]
            return [welcome["type"], *sorted(kinds)]

    assert trio.run(chat) == ["welcome", "ack", "message"]


def test_papaya_dialect_in_clear_only_on_its_own_port(
    trio_servers: ServerFactory, pki: Pki
) -> None:
    server = trio_servers.start(*pki.server_args(), "--papaya-port", "0")
    match = next(line for line in server.log.splitlines() if "listening papaya" in line)
    papaya_port = int(match.split("listening papaya ")[1].split()[0].rsplit(":", 1)[1])
    assert "papayaChat dialect only, in clear" in match

    member = TcpClient(server.port, "alice", server.key, pki.client_context())
    try:
        with socket.create_connection(("127.0.0.1", papaya_port), timeout=WAIT) as papaya:
            papaya.sendall(server.key.encode())
            papaya.sendall(b"bob: hello in clear\n")
            while (obj := member.receive())["type"] != "message":
                pass
            assert (obj["user"], obj["text"]) == ("bob", "hello in clear")
            member.chat("hi bob")
            received = b""
            while b"hi bob" not in received:
                chunk = papaya.recv(4096)
                assert chunk, "the papaya port closed"
                received += chunk
        # The native dialect, whose client can do TLS, is not served in clear.
        with socket.create_connection(("127.0.0.1", papaya_port), timeout=WAIT) as native:
            native.sendall(json.dumps({"type": "hello", "key": server.key, "user": "c"}).encode())
            native.sendall(b"\n")
            reply = json.loads(native.makefile("rb").readline())
            assert (reply["code"], reply["fatal"]) == ("wrong_port", True)
    finally:
        member.close()


def test_sighup_reloads_the_certificate_without_dropping_anyone(
    tls_server: RunningServer, pki: Pki, tmp_path: Path
) -> None:
    old = TcpClient(tls_server.port, "old", tls_server.key, pki.client_context())
    try:
        renewed = make_pki(tmp_path / "renewed")
        pki.cert.write_bytes(renewed.cert.read_bytes())
        pki.key.write_bytes(renewed.key.read_bytes())
        tls_server.process.send_signal(signal.SIGHUP)
        wait_for_log(tls_server, "SIGHUP: reloaded the TLS certificate")

        new = TcpClient(tls_server.port, "new", tls_server.key, renewed.client_context())
        try:
            assert certificate(new) == renewed.leaf_der != certificate(old)
            assert old.chat("still here") == 1  # the old connection is up
        finally:
            new.close()

        # A broken pair is refused: logged, and the renewed certificate stays.
        pki.key.write_text("not a key\n")
        tls_server.process.send_signal(signal.SIGHUP)
        wait_for_log(tls_server, "SIGHUP: TLS certificate not reloaded, keeping the old one")
        again = TcpClient(tls_server.port, "again", tls_server.key, renewed.client_context())
        try:
            assert certificate(again) == renewed.leaf_der
        finally:
            again.close()
        assert old.chat("and still") == 2
    finally:
        old.close()
    assert tls_server.stop() == 0


def test_sighup_without_tls_changes_nothing(trio_servers: ServerFactory) -> None:
    server = trio_servers.start()
    server.process.send_signal(signal.SIGHUP)
    wait_for_log(server, "SIGHUP: nothing to reload without TLS")
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(json.dumps({"type": "hello", "key": server.key, "user": "a"}).encode())
        sock.sendall(b"\n")
        assert json.loads(sock.makefile("rb").readline())["type"] == "welcome"
    assert server.stop() == 0


@pytest.mark.parametrize("broken", ["missing", "garbage", "mismatch"])
def test_a_bad_certificate_or_key_stops_the_start(pki: Pki, tmp_path: Path, broken: str) -> None:
    key = pki.key
    if broken == "missing":
        key = tmp_path / "nowhere.pem"
    elif broken == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    else:
        key = make_pki(tmp_path / "other").key
    result = serve(
        "--data-dir", str(tmp_path / "data"), "--tcp-port", "0", "--http-port", "0",
        "--tls-cert", str(pki.cert), "--tls-key", str(key),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("papaya-trio: error: ")
    assert str(key if broken == "missing" else pki.cert) in result.stderr


def test_plaintext_off_loopback_is_refused_before_binding(tmp_path: Path) -> None:
    result = serve("--data-dir", str(tmp_path / "data"), "--listen", "0.0.0.0", "--tcp-port", "0")
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "the room key, user names and messages" in result.stderr
    assert not (tmp_path / "data").exists()  # it stopped before doing anything


def test_allow_plaintext_starts_with_a_warning(trio_servers: ServerFactory) -> None:
    server = RunningServer(
        trio_servers.tmp_path / "data",
        ["--listen", "0.0.0.0", "--tcp-port", "0", "--http-port", "0", "--allow-plaintext"],
    )
    trio_servers.started.append(server)
    assert server.stop() == 0
    warning = next(line for line in server.log.splitlines() if "allow_plaintext" in line)
    assert "WARNING" in warning
    assert "the room key, user names and messages travel in clear" in warning
    assert "0.0.0.0" in warning


def test_fork_mode_refuses_tls(pki: Pki, tmp_path: Path) -> None:
    result = serve("--mode", "fork", "--data-dir", str(tmp_path / "data"), *pki.server_args())
    assert result.returncode == 2
    assert "fork mode does not serve TLS" in result.stderr


def test_fork_mode_follows_the_plaintext_rule(tmp_path: Path) -> None:
    result = serve("--mode", "fork", "--data-dir", str(tmp_path / "d"), "--listen", "*")
    assert result.returncode == 2
    assert "refusing to listen on *" in result.stderr
