"""Client settings: flags, then environment variables, then the TOML file, then defaults.

The TOML file is `$XDG_CONFIG_HOME/papaya/client.toml` (`~/.config/papaya/client.toml` when
XDG_CONFIG_HOME is unset) or the file given with `--config`. It may hold these keys:

    host = "chat.example.org"
    port = 7722
    user = "alice"
    key_file = "~/.config/papaya/key"   # relative paths are relative to the TOML file
    ws = "wss://chat.example.org/ws"    # use WebSocket instead of TCP
    tls = true                          # TLS on the TCP port (a wss:// URL always has it)
    ca_file = "papaya-ca.pem"           # trust this certificate (default: the system's CAs)
    token_file = "~/.config/papaya/token"  # a personal token (`papaya-trio user add NAME`)

The matching environment variables are PAPAYA_HOST, PAPAYA_PORT, PAPAYA_USER, PAPAYA_KEY_FILE,
PAPAYA_WS, PAPAYA_TLS (1 or 0), PAPAYA_CA_FILE and PAPAYA_TOKEN_FILE. With a token file the
client proves its name with the personal token; on a server with `auth = "accounts"` it needs
no key then (a key file is still used when there is one). With TLS the server's certificate
is always verified, host name included. The key itself is read from the key file so that it never
appears in the process list; `--key` exists for quick tests but any local user can read it
from `ps`.
"""

from __future__ import annotations

import getpass
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7722
#: Where `papaya-trio serve` keeps its key when started in the same directory.
DEFAULT_KEY_FILE = Path("papaya-data") / "key"
#: A key file larger than this is certainly not a key file.
MAX_KEY_FILE_BYTES = 4096
#: The protocol's limit on user names.
MAX_USER_CHARS = 32

SETTINGS = ("host", "port", "user", "key_file", "ws", "tls", "ca_file", "token_file")
ENVIRONMENT = {name: f"PAPAYA_{name.upper()}" for name in SETTINGS}


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and where it came from."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything needed to connect, resolved from all sources."""

    host: str
    port: int
    user: str
    key: str | None
    ws_url: str | None
    tls: bool = False
    ca_file: Path | None = None
    token: str | None = None

    @property
    def secure(self) -> bool:
        """Whether the connection is TLS (on the TCP port, or a wss:// URL)."""
        return self.tls or (self.ws_url or "").startswith("wss://")

    def __repr__(self) -> str:
        # Never show the key, not even in a traceback.
        return (
            f"ClientConfig(host={self.host!r}, port={self.port}, user={self.user!r},"
            f" ws_url={self.ws_url!r}, tls={self.tls}, ca_file={self.ca_file!r},"
            f" key=<{len(self.key or '')} chars>, token=<{len(self.token or '')} chars>)"
        )


def default_config_path(environ: Mapping[str, str]) -> Path:
    """The TOML file's place, following the XDG base directory rules."""
    xdg = environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "papaya" / "client.toml"


def read_toml(path: Path, *, required: bool) -> dict[str, object]:
    """Read the TOML file; a missing file is empty unless it was asked for explicitly.

    Relative `key_file` paths are made relative to the file's directory.
    """
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})"
        )
    for name in ("key_file", "ca_file", "token_file"):
        value = values.get(name)
        if isinstance(value, str):
            values[name] = str(path.parent / Path(value).expanduser())
    return values


def resolve(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    file_values: Mapping[str, object],
    *,
    key: str | None = None,
) -> ClientConfig:
    """Merge the sources, highest precedence first: flags, environment, file, defaults.

    `flags` maps setting names to flag values (None when the flag was not given). `key` is the
    value of `--key`, which beats any key file.
    """

    def pick(name: str) -> tuple[object, str] | None:
        if flags.get(name) is not None:
            return flags[name], f"--{name.replace('_', '-')}"
        if environ.get(ENVIRONMENT[name]):
            return environ[ENVIRONMENT[name]], ENVIRONMENT[name]
        if file_values.get(name) is not None:
            return file_values[name], f"{name} in the config file"
        return None

    host_value = pick("host")
    host = _text(host_value) if host_value else DEFAULT_HOST
    port_value = pick("port")
    port = _port(port_value) if port_value else DEFAULT_PORT
    user_value = pick("user")
    user = _user(user_value) if user_value else _user((getpass.getuser(), "the login name"))
    ws_value = pick("ws")
    ws_url = _ws_url(ws_value) if ws_value else None
    tls_value = pick("tls")
    tls = _bool(tls_value) if tls_value else False
    if tls and ws_url is not None and not ws_url.startswith("wss://"):
        raise ConfigError(f"TLS over WebSocket needs a wss:// URL, not {ws_url!r}")
    ca_value = pick("ca_file")
    ca_file = Path(_text(ca_value)).expanduser() if ca_value else None
    token_value = pick("token_file")
    token = read_key_file(Path(_text(token_value)).expanduser(), "token") if token_value else None
    key_value = pick("key_file")
    if key is None and (token is None or key_value is not None or DEFAULT_KEY_FILE.is_file()):
        key = read_key_file(_key_file(key_value))
    return ClientConfig(
        host=host,
        port=port,
        user=user,
        key=key,
        ws_url=ws_url,
        tls=tls,
        ca_file=ca_file,
        token=token,
    )


def read_key_file(path: Path, what: str = "key") -> str:
    """Return the key (or token) held in `path`, without surrounding whitespace."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{what} file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        key = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path} is not ASCII text") from None
    if not key:
        raise ConfigError(f"{what} file {path} is empty")
    return key


def _key_file(value: tuple[object, str] | None) -> Path:
    if value is None:
        if DEFAULT_KEY_FILE.is_file():
            return DEFAULT_KEY_FILE
        raise ConfigError(
            "no key: give --key-file, set PAPAYA_KEY_FILE, or set key_file in the config file"
            f" (the default {DEFAULT_KEY_FILE} does not exist here)"
        )
    return Path(_text(value)).expanduser()


def _text(value: tuple[object, str]) -> str:
    raw, source = value
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{source} must be a non-empty string")
    return raw


def _port(value: tuple[object, str]) -> int:
    raw, source = value
    try:
        port = int(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else -1
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{source} must be a port number from 1 to 65535, not {raw!r}")
    return port


def _user(value: tuple[object, str]) -> str:
    user = _text(value)
    if len(user) > MAX_USER_CHARS or not user.isprintable() or any(ch.isspace() for ch in user):
        raise ConfigError(
            f"{value[1]} gives user name {user!r}: it must be 1 to {MAX_USER_CHARS}"
            " printable characters without spaces"
        )
    return user


def _bool(value: tuple[object, str]) -> bool:
    raw, source = value
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return raw.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{source} must be true or false, not {raw!r}")


def _ws_url(value: tuple[object, str]) -> str:
    url = _text(value)
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{value[1]} must be a ws:// or wss:// URL, not {url!r}")
    return url


def load(
    flags: Mapping[str, object],
    *,
    config_path: Path | None,
    key: str | None,
    environ: Mapping[str, str] = os.environ,
) -> ClientConfig:
    """Resolve the configuration from flags, `environ` and the TOML file."""
    path = config_path if config_path is not None else default_config_path(environ)
    return resolve(flags, environ, read_toml(path, required=config_path is not None), key=key)
