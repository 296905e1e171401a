"""Configuration precedence and errors, key files, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from papaya_trio.cli import build_parser, main
from papaya_trio.config import (
    OPTIONS,
    ConfigError,
    ServerConfig,
    cleartext_warning,
    default_toml,
    load_config,
)
from papaya_trio.keys import KeyFileError, read_key
from papaya_trio.service import ServiceError, locked_data_dir


def config_from(argv: list[str]) -> ServerConfig:
    return load_config(build_parser().parse_args(["serve", *argv]))


def test_defaults_work_out_of_the_box() -> None:
    config = config_from([])
    assert config.listen == ["127.0.0.1"]
    assert config.tcp_port == 7722
    assert config.data_dir == "./papaya-data"
    assert config.fsync == "always"


def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "papaya.toml"
    path.write_text('tcp_port = 9000\nhistory = 5\nlisten = ["::1", "127.0.0.1"]\n')
    config = config_from(["--config", str(path), "--history", "7"])
    assert config.tcp_port == 9000
    assert config.history == 7
    assert config.listen == ["::1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("tcp_prot = 1\n", "unknown option 'tcp_prot'"),
        ('tcp_port = "7722"\n', 'tcp_port must be an integer, not "7722"'),
        ("tcp_port = 70000\n", "at most 65535"),
        ('fsync = "sometimes"\n', "fsync must be one of always, interval, never"),
        ("history = -1\n", "history must be at least 0"),
        (
            "max_message_bytes = 10000\nmax_line_bytes = 16384\n",
            "max_line_bytes = 16384 is too small for max_message_bytes = 10000",
        ),
        ("listen = []\n", "at least one address"),
        ('tls_cert = "c.pem"\n', "tls_cert and tls_key go together"),
        ("allow_plaintext = 1\n", "allow_plaintext must be true or false, not 1"),
        ("history = 1.5\n", "history must be an integer, not 1.5"),
        ('listen = "::1"\n', 'listen must be a list of strings, not "::1"'),
        ("papaya_port = -2\n", "papaya_port must be at least -1"),
        ("tcp_port = 8080\n", "tcp_port and http_port are both 8080: give each its own"),
        ("papaya_port = 7722\n", "tcp_port and papaya_port are both 7722"),
        ("= broken", "not valid TOML"),
    ],
)
def test_bad_config_files_give_clear_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "papaya.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        config_from(["--config", str(path)])


TLS = ["--tls-cert", "c.pem", "--tls-key", "k.pem"]


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--listen", "127.0.0.1", "--listen", "::1"], False),  # loopback: nothing leaves
        (["--listen", "localhost"], False),
        (["--listen", "0.0.0.0"], True),
        (["--listen", "*"], True),
        (["--listen", "192.168.1.10"], True),
        (["--listen", "chat.example.org"], True),  # a name: assume the network reaches it
        (["--listen", "*", *TLS], False),
        (["--listen", "*", *TLS, "--papaya-port", "7723"], True),  # papayaChat in clear
        (["--listen", "127.0.0.1", *TLS, "--papaya-port", "7723"], False),
        (["--listen", "*", "--allow-plaintext"], False),
        (["--listen", "*", "--mode", "fork"], True),
    ],
)
def test_plaintext_off_loopback_needs_allow_plaintext(argv: list[str], refused: bool) -> None:
    if refused:
        with pytest.raises(ConfigError, match="room key, user names and messages"):
            config_from(argv)
        config = config_from([*argv, "--allow-plaintext"])
        assert "travel in clear" in (cleartext_warning(config) or "")
    else:
        config = config_from(argv)
        assert cleartext_warning(config) is None or config.allow_plaintext


def test_allow_plaintext_in_a_file_and_its_flag(tmp_path: Path) -> None:
    path = tmp_path / "papaya.toml"
    path.write_text('listen = ["*"]\nallow_plaintext = true\n')
    assert config_from(["--config", str(path)]).allow_plaintext
    with pytest.raises(ConfigError, match="refusing to listen on \\*"):
        config_from(["--config", str(path), "--no-allow-plaintext"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config_from(["--config", str(tmp_path / "nope.toml")])


def test_default_config_is_valid_toml_that_loads_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "default.toml"
    path.write_text(default_toml())
    assert tomllib.loads(path.read_text())["tcp_port"] == 7722
    assert config_from(["--config", str(path)]) == config_from([])


def test_keygen_writes_an_owner_only_key_and_never_clobbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sub" / "key"
    assert main(["keygen", str(path)]) == 0
    key = read_key(path)
    assert len(key) == 128 and key.isalnum()
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["keygen", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert read_key(path) == key
    assert main(["keygen", "--force", str(path)]) == 0
    assert read_key(path) != key


@pytest.mark.parametrize(
    ("key", "rule"),
    [("short", "exactly 128"), ("a b" * 43, "exactly 128"), ("{" + "k" * 127, "start with")],
)
def test_bad_key_file_is_refused(tmp_path: Path, key: str, rule: str) -> None:
    path = tmp_path / "key"
    path.write_text(key + "\n")
    with pytest.raises(KeyFileError, match=rule):
        read_key(path)


def test_serve_with_a_bad_key_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("too short")
    result = subprocess.run(
        [sys.executable, "-m", "papaya_trio", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 2
    assert "papaya-trio: error:" in result.stderr and "exactly 128" in result.stderr


def test_one_server_per_data_folder(tmp_path: Path) -> None:
    with (
        locked_data_dir(tmp_path),
        pytest.raises(ServiceError, match="another server"),
        locked_data_dir(tmp_path),
    ):
        pass


def test_readme_documents_every_option() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        assert f"| `{option.name}` | `{flag}` |" in readme, option.name
