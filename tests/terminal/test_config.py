"""Configuration precedence: flags > environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from papaya_clients.terminal import config
from papaya_clients.terminal.config import ConfigError

NO_FLAGS: dict[str, object] = {}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text("k" * 128 + "\n")
    return path


def test_defaults(key_file: Path) -> None:
    settings = config.resolve({"user": "alice", "key_file": str(key_file)}, {}, {})
    assert (settings.host, settings.port, settings.ws_url) == ("127.0.0.1", 7722, None)
    assert settings.key == "k" * 128


def test_flags_beat_environment_beat_file(key_file: Path) -> None:
    file_values = {"host": "file", "port": 1, "user": "file_user", "key_file": str(key_file)}
    environ = {"PAPAYA_HOST": "env", "PAPAYA_PORT": "2"}
    settings = config.resolve({"host": "flag"}, environ, file_values)
    assert (settings.host, settings.port, settings.user) == ("flag", 2, "file_user")


def test_key_flag_beats_every_key_file(tmp_path: Path) -> None:
    settings = config.resolve(
        {"user": "a"}, {"PAPAYA_KEY_FILE": str(tmp_path / "missing")}, {}, key="direct"
    )
    assert settings.key == "direct"


def test_key_file_from_environment(key_file: Path) -> None:
    settings = config.resolve({"user": "a"}, {"PAPAYA_KEY_FILE": str(key_file)}, {})
    assert settings.key == "k" * 128


def test_default_key_file_is_the_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no key"):
        config.resolve({"user": "a"}, {}, {})
    (tmp_path / "papaya-data").mkdir()
    (tmp_path / "papaya-data" / "key").write_text("serverkey\n")
    assert config.resolve({"user": "a"}, {}, {}).key == "serverkey"


def test_toml_file_under_xdg_config_home(tmp_path: Path, key_file: Path) -> None:
    path = tmp_path / "xdg" / "papaya" / "client.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'host = "example.org"\nport = 9000\nuser = "carol"\nkey_file = "{key_file}"\n')
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert config.default_config_path(environ) == path
    settings = config.load({}, config_path=None, key=None, environ=environ)
    assert (settings.host, settings.port, settings.user) == ("example.org", 9000, "carol")


def test_default_config_path_without_xdg() -> None:
    assert config.default_config_path({}) == Path.home() / ".config" / "papaya" / "client.toml"


def test_relative_key_file_in_toml_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "mykey").write_text("fromtoml")
    path = tmp_path / "client.toml"
    path.write_text('key_file = "mykey"\nuser = "a"\n')
    settings = config.load({}, config_path=path, key=None, environ={})
    assert settings.key == "fromtoml"


def test_missing_default_toml_is_fine_but_missing_explicit_one_is_not(tmp_path: Path) -> None:
    assert config.read_toml(tmp_path / "none.toml", required=False) == {}
    with pytest.raises(ConfigError, match="does not exist"):
        config.read_toml(tmp_path / "none.toml", required=True)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('hots = "x"\n', "unknown setting 'hots'"),
        ("port = [\n", "cannot read"),
    ],
)
def test_bad_toml_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "client.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        config.read_toml(path, required=True)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"port": "0"}, "from 1 to 65535"),
        ({"port": "http"}, "from 1 to 65535"),
        ({"user": "two words"}, "without spaces"),
        ({"user": "x" * 33}, "1 to 32"),
        ({"ws": "http://x"}, "ws:// or wss://"),
    ],
)
def test_bad_values_name_their_source(flags: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        config.resolve({"user": "a", **flags}, {}, {}, key="k")
    assert "--" in str(info.value)


def test_bad_value_from_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PAPAYA_PORT"):
        config.resolve({"user": "a"}, {"PAPAYA_PORT": "99999"}, {}, key="k")


def test_key_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        config.read_key_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.read_key_file(tmp_path / "empty")


def test_repr_hides_the_key(key_file: Path) -> None:
    settings = config.resolve({"user": "a", "key_file": str(key_file)}, {}, {})
    assert "kkkk" not in repr(settings)


def test_tls_settings_from_the_file_are_relative_to_it(key_file: Path, tmp_path: Path) -> None:
    toml = tmp_path / "conf" / "client.toml"
    toml.parent.mkdir()
    toml.write_text(f'tls = true\nca_file = "ca.pem"\nkey_file = "{key_file}"\nuser = "a"\n')
    settings = config.resolve({}, {}, config.read_toml(toml, required=True))
    assert (settings.tls, settings.ca_file, settings.secure) == (True, toml.parent / "ca.pem", True)


@pytest.mark.parametrize(("value", "tls"), [("1", True), ("yes", True), ("0", False)])
def test_tls_from_the_environment(key_file: Path, value: str, tls: bool) -> None:
    settings = config.resolve({"user": "a", "key_file": str(key_file)}, {"PAPAYA_TLS": value}, {})
    assert settings.tls is tls


def test_tls_needs_a_wss_url(key_file: Path) -> None:
    flags = {"user": "a", "key_file": str(key_file), "tls": True, "ws": "ws://h/ws"}
    with pytest.raises(ConfigError, match="needs a wss:// URL"):
        config.resolve(flags, {}, {})
    flags["ws"] = "wss://h/ws"
    assert config.resolve(flags, {}, {}).secure


def test_tls_must_be_a_boolean(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="PAPAYA_TLS must be true or false"):
        config.resolve({"user": "a", "key_file": str(key_file)}, {"PAPAYA_TLS": "maybe"}, {})


def test_token_file_alone_is_enough_and_with_a_key_both_are_sent(
    tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./papaya-data/key here
    token_file = tmp_path / "token"
    token_file.write_text("t" * 43 + "\n")
    alone = config.resolve({"user": "a"}, {"PAPAYA_TOKEN_FILE": str(token_file)}, {})
    assert (alone.key, alone.token) == (None, "t" * 43)
    assert "tttt" not in repr(alone)
    both = config.resolve(
        {"user": "a", "key_file": str(key_file), "token_file": str(token_file)}, {}, {}
    )
    assert (both.key, both.token) == ("k" * 128, "t" * 43)
    with pytest.raises(ConfigError, match="cannot read token file"):
        config.resolve({"user": "a", "token_file": str(tmp_path / "missing")}, {}, {})
    with pytest.raises(ConfigError, match="no key"):
        config.resolve({"user": "a"}, {}, {})
