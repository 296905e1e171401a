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
    """Write `key` to `path` with owner-only permissions; never clobber unless `replace`.

    A missing folder is created owner-only, but only the last one: a missing grandparent is
    more likely a typo than a wish.
    """
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except FileNotFoundError:
        raise KeyFileError(
            f"cannot create {folder} for the key: {folder.parent} does not exist"
        ) from None
    except FileExistsError:
        raise KeyFileError(
            f"cannot write the key in {folder}: it is a file, not a folder"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {folder} for the key: {exc.strerror}") from None
    temporary = path.with_name(path.name + ".new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write the key in {folder}: {exc.strerror}") from None
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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {path} is a folder, not a file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if not raw.isascii():
        where = next(i for i, byte in enumerate(raw) if byte >= 0x80)
        raise KeyFileError(
            f"key file {path} holds a non-ASCII byte at offset {where}: a key is"
            f" {KEY_CHARS} printable ASCII characters (make one with `papaya-trio keygen`)"
        )
    key = raw.decode("ascii").removesuffix("\n").removesuffix("\r")
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
