"""`papaya-chat --tls --ca-file` and `--ws wss://` as real processes against a TLS server:
it chats when the certificate is good, and refuses a certificate it cannot verify."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_server import RunningServer, ServerFactory
from tests.terminal.conftest import key_file
from tests.tls.conftest import Pki, make_pki
from tests.web.browser import TcpClient

CLIENT = [sys.executable, "-m", "papaya_clients.terminal"]
TIMEOUT = 20


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "TZ": "UTC", "LANG": "C.UTF-8"}


def papaya_chat(env: dict[str, str], text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, "--once", *args],
        input=text,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def once(
    server: RunningServer, env: dict[str, str], text: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return papaya_chat(env, text, "--user", "bob", "--key-file", str(key_file(server)), *extra)


def history(server: RunningServer, pki: Pki) -> list[str]:
    reader = TcpClient(server.port, "reader", server.key, pki.client_context())
    try:
        return reader.wait_messages(reader.welcome["head"])
    finally:
        reader.close()


def test_once_over_tls(tls_server: RunningServer, pki: Pki, client_env: dict[str, str]) -> None:
    tls = ("--tls", "--ca-file", str(pki.ca_file), "--port", str(tls_server.port))
    result = once(tls_server, client_env, "secret plans\n", *tls)
    assert (result.returncode, result.stderr) == (0, "")
    assert history(tls_server, pki) == ["secret plans"]


def test_once_over_wss(tls_server: RunningServer, pki: Pki, client_env: dict[str, str]) -> None:
    url = f"wss://127.0.0.1:{tls_server.http_port}/ws"
    result = once(tls_server, client_env, "over wss\n", "--ws", url, "--ca-file", str(pki.ca_file))
    assert (result.returncode, result.stderr) == (0, "")
    assert history(tls_server, pki) == ["over wss"]


def test_tls_settings_from_the_environment(
    tls_server: RunningServer, pki: Pki, client_env: dict[str, str]
) -> None:
    env = {**client_env, "PAPAYA_TLS": "1", "PAPAYA_CA_FILE": str(pki.ca_file)}
    result = once(tls_server, env, "from env\n", "--port", str(tls_server.port))
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("case", "explanation"),
    [
        ("wrong CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("wrong host name", "IP address mismatch"),
    ],
)
def test_a_certificate_that_cannot_be_verified_is_refused(
    trio_servers: ServerFactory,
    pki: Pki,
    tmp_path: Path,
    client_env: dict[str, str],
    case: str,
    explanation: str,
) -> None:
    trusted = pki.ca_file
    if case == "wrong CA":
        served = pki
        trusted = make_pki(tmp_path / "other").ca_file
    elif case == "expired":
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        served = make_pki(tmp_path / "expired", not_after=yesterday)
        trusted = served.ca_file
    else:
        served = make_pki(tmp_path / "named", "chat.example.org")
        trusted = served.ca_file
    server = trio_servers.start(*served.server_args())
    for via in (
        ["--tls", "--port", str(server.port)],
        ["--ws", f"wss://127.0.0.1:{server.http_port}/ws"],
    ):
        result = once(server, client_env, "must not be sent\n", *via, "--ca-file", str(trusted))
        assert result.returncode == 4, result.stderr
        assert "the server's TLS certificate is not accepted" in result.stderr
        assert explanation in result.stderr
    assert "bob joined" not in server.log


def test_tls_against_a_plaintext_server_fails_clearly(
    trio_servers: ServerFactory, pki: Pki, client_env: dict[str, str]
) -> None:
    server = trio_servers.start()
    tls = ("--tls", "--ca-file", str(pki.ca_file), "--port", str(server.port))
    result = once(server, client_env, "hi\n", *tls)
    assert result.returncode == 4
    assert "TLS failed" in result.stderr


def test_a_missing_ca_file_is_a_usage_error(pki: Pki, client_env: dict[str, str]) -> None:
    result = papaya_chat(
        client_env, "", "--tls", "--ca-file", "/nonexistent/ca.pem", "--key", "k" * 128
    )
    assert result.returncode == 2
    assert "cannot use CA file /nonexistent/ca.pem" in result.stderr
