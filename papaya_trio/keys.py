"""The shared key: generating it, writing it owner-only, reading it back."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import string
from pathlib import Path

from papaya_trio.protocol.rules import KEY_CHARS, key_problem

KEY_ALPHABET = string.ascii_letters + string.digits


class KeyFileError(Exception):
    """The key file is missing, unreadable or does not hold a valid key."""


def generate_key() -> str:
    """A fresh random key of 128 letters and digits."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_CHARS))


def write_key(path: Path, key: str, *, replace: bool = False) -> None:
    """Write `key` to `path` with owner-only permissions; never clobber unless `replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(temporary, path)
    else:
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists (use --force to replace it)") from None
        finally:
            temporary.unlink()


def read_key(path: Path) -> str:
    """Read and check the key in `path`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    key = text.removesuffix("\n").removesuffix("\r")
    if why := key_problem(key):
        raise KeyFileError(f"{path}: {why}")
    return key


def key_is_private(path: Path) -> bool:
    """False if group or others may read the key file."""
    return not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def key_matches(key: bytes, candidate: str | bytes) -> bool:
    """Compare a presented key with the room's `key` in constant time."""
    if isinstance(candidate, str):
        try:
            candidate = candidate.encode()
        except UnicodeEncodeError:
            return False
    return hmac.compare_digest(candidate, key)
