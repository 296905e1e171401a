"""`papaya-trio cert`: a self-signed pair that a server serves and a client trusts as is."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from tests.real_server import ServerFactory
from tests.terminal.conftest import key_file

TIMEOUT = 20


def cert_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "papaya_trio", "cert", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
    )


def test_a_self_signed_pair_serves_and_is_trusted_by_papaya_chat(
    trio_servers: ServerFactory, tmp_path: Path
) -> None:
    made = cert_command("127.0.0.1", "localhost", "chat.lan", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    cert, key = tmp_path / "papaya-data" / "tls-cert.pem", tmp_path / "papaya-data" / "tls-key.pem"
    for path in (cert, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    names = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "chat.lan"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    server = trio_servers.start("--tls-cert", str(cert), "--tls-key", str(key))
    sent = subprocess.run(
        [sys.executable, "-m", "papaya_clients.terminal", "--once", "--tls", "--ca-file", str(cert),
         "--port", str(server.port), "--user", "lan", "--key-file", str(key_file(server))],
        input="trusted as is\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert (sent.returncode, sent.stderr) == (0, "")


def test_existing_files_are_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "papaya-data"
    folder.mkdir()
    (folder / "tls-key.pem").write_text("precious\n")
    result = cert_command("127.0.0.1", cwd=tmp_path)
    assert result.returncode == 2
    assert "tls-key.pem already exists: not overwriting it" in result.stderr
    assert (folder / "tls-key.pem").read_text() == "precious\n"
    assert not (folder / "tls-cert.pem").exists()


def test_a_name_that_is_no_host_is_refused(tmp_path: Path) -> None:
    result = cert_command("https://chat.lan/", cwd=tmp_path)
    assert result.returncode == 2
    assert "neither a host name nor an IP address" in result.stderr
    assert not (tmp_path / "papaya-data").exists()
