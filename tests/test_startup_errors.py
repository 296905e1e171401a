"""Start-up errors as an operator sees them: one line naming the cause, and exit status 2.

Each case runs the real `papaya-trio` command in a child process, as a shell or systemd would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from papaya_trio.cli import EXIT_CONFIG, build_parser
from papaya_trio.config import load_config
from papaya_trio.service import browser_url
from tests.real_server import RunningServer, ServerFactory

TIMEOUT = 60


def papaya(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `papaya-trio ARGV...` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "papaya_trio", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "error", **(env or {})},
    )


def config_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a run that must have failed on its configuration."""
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("papaya-trio: error: "), result.stderr
    return lines[0]


def serve(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`serve` on loopback with free ports, expected to stop before listening."""
    ports = ["--listen", "127.0.0.1", "--tcp-port", "0", "--http-port", "0"]
    return papaya("serve", "--data-dir", str(data_dir), *ports, *argv)


def test_data_folder_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    line = config_error(serve(afile))
    assert f"data folder {afile} cannot be used: it or a folder above it is a file" in line
    assert afile.read_text() == "not a folder"


def test_data_folder_below_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    line = config_error(serve(blocker / "data"))
    assert f"data folder {blocker / 'data'} cannot be used" in line


def test_data_folder_not_writable(shared_tmp: Path) -> None:
    data = shared_tmp / "data"
    data.mkdir(mode=0o755)
    command = [sys.executable, "-m", "papaya_trio", "serve", "--data-dir", str(data)]
    command += ["--listen", "127.0.0.1", "--tcp-port", "0", "--http-port", "0"]
    if os.getuid() == 0:
        # root may write anywhere: run the server as nobody, as a service user would be
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to run the server as another user")
        as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        probe = [*as_nobody, sys.executable, "-c", "import papaya_trio"]
        if subprocess.run(probe, capture_output=True, timeout=TIMEOUT).returncode != 0:
            pytest.skip("this checkout or its virtual environment is not readable by nobody")
        command = [*as_nobody, *command]
    else:
        data.chmod(0o555)
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    line = config_error(result)
    assert f"data folder {data} is not writable by this user" in line
    assert list(data.iterdir()) == []


def test_invalid_listen_address(tmp_path: Path) -> None:
    result = papaya("serve", "--data-dir", str(tmp_path / "data"), "--listen", "999.1.1.1")
    line = config_error(result)
    assert "listen address '999.1.1.1' is not a valid IPv4 or IPv6 address" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3", "::g", "bad_name!", "a..b", ""])
def test_listen_addresses_that_cannot_be_one(host: str) -> None:
    with pytest.raises(Exception, match="listen address"):
        load_config(build_parser().parse_args(["serve", "--listen", host]))


def test_non_ascii_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "key").write_bytes("é".encode() * 64 + b"\n")
    line = config_error(serve(data))
    assert f"key file {data / 'key'} holds a non-ASCII byte at offset 0" in line


def test_toml_type_error_names_the_type_and_the_value(tmp_path: Path) -> None:
    config = tmp_path / "papaya.toml"
    config.write_text('tcp_port = "abc"\n')
    line = config_error(serve(tmp_path / "data", "--config", str(config)))
    assert line.endswith(f'{config}: tcp_port must be an integer, not "abc"')


def test_raising_max_message_bytes_alone_raises_the_limits_that_depend_on_it(
    tmp_path: Path,
) -> None:
    config = tmp_path / "papaya.toml"
    config.write_text("max_message_bytes = 100000\n")
    loaded = load_config(build_parser().parse_args(["serve", "--config", str(config)]))
    assert loaded.max_line_bytes == 3 * 100000 + 1024
    assert loaded.ws_max_message_bytes == 3 * 100000 + 1024
    # lowering it leaves the defaults alone
    config.write_text("max_message_bytes = 100\n")
    loaded = load_config(build_parser().parse_args(["serve", "--config", str(config)]))
    assert loaded.max_line_bytes == 16384


def test_a_limit_set_too_small_names_both_options(tmp_path: Path) -> None:
    config = tmp_path / "papaya.toml"
    config.write_text("max_message_bytes = 100000\nmax_line_bytes = 20000\n")
    line = config_error(serve(tmp_path / "data", "--config", str(config)))
    assert "max_line_bytes = 20000 is too small for max_message_bytes = 100000" in line
    assert "301024" in line


def test_unknown_serve_flag_prints_the_serve_usage(tmp_path: Path) -> None:
    result = papaya("serve", "--prot", "5")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: papaya-trio serve ")
    assert "papaya-trio serve: error: unrecognized arguments: --prot 5" in result.stderr


def test_missing_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    typo = tmp_path / "kye"
    line = config_error(serve(tmp_path / "data", "--key-file", str(typo)))
    assert f"key file {typo} does not exist" in line
    assert not typo.exists()
    assert not (tmp_path / "data" / "key").exists()


@pytest.mark.parametrize("mode", ["trio", "fork"])
def test_port_in_use_stops_before_anything_is_created(tmp_path: Path, mode: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--mode", mode, "--listen", "127.0.0.1", "--tcp-port", str(port)]
        if mode == "trio":
            argv += ["--http-port", "0"]
        result = papaya("serve", "--data-dir", str(tmp_path / "data"), *argv)
    line = config_error(result)
    assert f"cannot listen on 127.0.0.1 port {port}: the port is in use" in line
    assert not (tmp_path / "data").exists()


def test_fork_mode_refuses_http_port(tmp_path: Path) -> None:
    result = papaya("serve", "--mode", "fork", "--data-dir", str(tmp_path), "--http-port", "9")
    line = config_error(result)
    assert "fork mode serves the TCP dialects only, not HTTP or WebSocket: drop --http-port" in line


@pytest.mark.parametrize("mode", ["trio", "fork"])
def test_every_start_logs_where_the_key_is_never_the_key(tmp_path: Path, mode: str) -> None:
    factory = ServerFactory(tmp_path, mode)
    try:
        for _ in range(2):  # the first start makes the key, the second finds it
            server = factory.start()
            assert f"room key: {server.data_dir / 'key'}" in server.log
            assert server.key not in server.log
            assert server.stop() == 0
    finally:
        factory.cleanup()


def test_under_journald_the_log_has_no_time_stamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = ServerFactory(tmp_path, "trio")
    try:
        server = factory.start()
        assert server.log.split(" ", 1)[0].count("-") == 2  # 2026-11-30 ...: a date first
        assert server.stop() == 0
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # what systemd sets for the journal
        server = factory.start()
        assert server.log.startswith(("INFO", "WARNING")), server.log
        assert server.stop(signal.SIGTERM) == 0
    finally:
        factory.cleanup()


def test_the_url_printed_for_every_interface_opens_in_a_browser(tmp_path: Path) -> None:
    argv = ["--listen", "0.0.0.0", "--tcp-port", "0", "--http-port", "0", "--allow-plaintext"]
    server = RunningServer(tmp_path / "data", argv)
    try:
        assert server.url == f"http://127.0.0.1:{server.http_port}/"
        assert "listening http http://0.0.0.0" not in server.log
        assert "(every interface: from another machine, http://" in server.log
        with urllib.request.urlopen(server.url, timeout=TIMEOUT) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        assert server.stop() == 0
    finally:
        server.kill()


def test_wildcard_listeners_print_a_url_a_browser_can_open() -> None:
    v4 = browser_url("http", ("0.0.0.0", 8080))
    assert v4.startswith("http://127.0.0.1:8080/ (every interface: from another machine,")
    assert f"http://{socket.gethostname()}:8080/" in v4
    assert browser_url("https", ("::", 8443, 0, 0)).startswith("https://[::1]:8443/ ")
    assert browser_url("http", ("192.168.1.10", 80)) == "http://192.168.1.10:80/"


def test_keygen_creates_only_the_last_folder_owner_only(tmp_path: Path) -> None:
    deep = tmp_path / "missing" / "data" / "key"
    result = papaya("keygen", str(deep))
    line = config_error(result)
    assert f"cannot create {deep.parent} for the key: {tmp_path / 'missing'} does not exist" in line
    assert not (tmp_path / "missing").exists()
    key = tmp_path / "data" / "key"
    assert papaya("keygen", str(key)).returncode == 0
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert key.stat().st_mode & 0o777 == 0o600


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_argument_has_help_text() -> None:
    parsers = list(_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {
        "papaya-trio serve",
        "papaya-trio keygen",
        "papaya-trio default-config",
        "papaya-trio bench",
    }
    for parser in parsers:
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"
