"""Personal accounts: names that belong to whoever holds their token (`papaya-trio user`).

Theory of operation
-------------------
`DATA_DIR/users.json` maps each registered name to a random salt and the scrypt hash of its
token, with the scrypt parameters used; the token itself is printed once by `user add` and
never stored. Tokens are 256 random bits, so the KDF is there for a stolen file, not for
guessable secrets.

Writers (`add_user`, `remove_user`) hold `flock` on `DATA_DIR/users.lock` for their whole
read-modify-write, so two commands cannot lose each other's change, and replace the file
atomically (a temporary file, fsync, rename, fsync of the folder) with owner-only
permissions: a reader sees the old file or the new one, never half of one.

The server keeps an `Accounts` and calls `refresh()` before each check: it stats the file and
re-reads it only when it changed, so `user add` and `user remove` take effect at the next
hello without a restart (connections already up are not touched). A file that cannot be read
or parsed at start stops the server; later, the server logs the problem and keeps what it had.
Checking a token runs scrypt (tens of milliseconds, 16 MiB) in a worker thread, off the event
loop, at most KDF_THREADS at a time: anyone can send hellos with tokens, and each check costs
the server that memory and CPU, so the checks queue rather than multiply.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from papaya_trio.protocol.rules import user_problem

logger = logging.getLogger(__name__)

USERS_FILE = "users.json"
LOCK_FILE = "users.lock"
FORMAT_VERSION = 1
SALT_BYTES = 16
HASH_BYTES = 32
TOKEN_BYTES = 32
MAX_USERS = 10_000  # a bound on the file the server reads (and holds in memory)
MAX_FILE_BYTES = 4 * 1024 * 1024
KDF_THREADS = 2  # token checks run at once (each holds 128 * n * r bytes)


class AccountError(Exception):
    """An account command or the accounts file breaks a rule; the message says which."""


@dataclass(frozen=True, slots=True)
class Kdf:
    """scrypt's cost parameters (memory is 128 * n * r bytes)."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    def problem(self) -> str | None:
        """Why these parameters are unusable (or too costly to let a file ask for), or None."""
        if not (2 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            return "scrypt n must be a power of two from 2 to 2**20"
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16 and 128 * self.n * self.r <= 2**28):
            return "scrypt r and p are out of range"
        return None

    def derive(self, token: str, salt: bytes) -> bytes:
        """The hash of `token` under `salt`."""
        return hashlib.scrypt(
            token.encode(),
            salt=salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=128 * self.n * self.r * self.p + 2**20,
            dklen=HASH_BYTES,
        )


DEFAULT_KDF = Kdf()


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered name: the salt and hash of its token."""

    salt: bytes
    digest: bytes
    kdf: Kdf

    def matches(self, token: str) -> bool:
        """Whether `token` is this name's token (constant-time comparison of the hashes)."""
        return hmac.compare_digest(self.kdf.derive(token, self.salt), self.digest)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What the accounts say about a hello: is the name registered, and is the token its own."""

    registered: bool
    valid: bool


NO_ACCOUNT = TokenCheck(registered=False, valid=False)


def users_path(data_dir: Path) -> Path:
    """Where a data folder keeps its accounts."""
    return data_dir / USERS_FILE


def read_entries(path: Path) -> dict[str, Entry]:
    """The accounts in `path` (none if it does not exist); AccountError if it is unusable."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AccountError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise AccountError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        document = json.loads(raw)
        if document.get("version") != FORMAT_VERSION:
            raise AccountError(f"{path}: unknown format version {document.get('version')!r}")
        users = document["users"]
        if not isinstance(users, dict) or len(users) > MAX_USERS:
            raise AccountError(f"{path}: users must be an object of at most {MAX_USERS} names")
        return {name: _entry(path, name, fields) for name, fields in users.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AccountError(f"{path} is not a valid accounts file: {exc}") from None


def _entry(path: Path, name: str, fields: dict[str, object]) -> Entry:
    kdf = Kdf(int(fields["n"]), int(fields["r"]), int(fields["p"]))  # type: ignore[call-overload]
    if why := kdf.problem():
        raise AccountError(f"{path}: {name}: {why}")
    salt = bytes.fromhex(str(fields["salt"]))
    digest = bytes.fromhex(str(fields["hash"]))
    if len(digest) != HASH_BYTES or not salt:
        raise AccountError(f"{path}: {name}: bad salt or hash")
    return Entry(salt, digest, kdf)


def _write_entries(path: Path, entries: dict[str, Entry]) -> None:
    users = {
        name: {
            "salt": e.salt.hex(),
            "hash": e.digest.hex(),
            "n": e.kdf.n,
            "r": e.kdf.r,
            "p": e.kdf.p,
        }
        for name, e in sorted(entries.items())
    }
    data = json.dumps({"version": FORMAT_VERSION, "users": users}, indent=1).encode() + b"\n"
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older leftover may have other permissions
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextmanager
def _locked(data_dir: Path) -> Iterator[Path]:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield users_path(data_dir)
    finally:
        os.close(fd)


def new_token() -> str:
    """A fresh personal token: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def add_user(data_dir: Path, name: str, kdf: Kdf = DEFAULT_KDF) -> str:
    """Register `name` and return its new token (shown once, stored only as a hash)."""
    if why := user_problem(name):
        raise AccountError(why)
    with _locked(data_dir) as path:
        entries = read_entries(path)
        if name in entries:
            raise AccountError(f"user {name!r} already exists (remove it first for a new token)")
        if len(entries) >= MAX_USERS:
            raise AccountError(f"there are already {MAX_USERS} users")
        token = new_token()
        salt = secrets.token_bytes(SALT_BYTES)
        entries[name] = Entry(salt, kdf.derive(token, salt), kdf)
        _write_entries(path, entries)
    return token


def remove_user(data_dir: Path, name: str) -> None:
    """Unregister `name`: its token stops working and anyone may use the name again."""
    with _locked(data_dir) as path:
        entries = read_entries(path)
        if entries.pop(name, None) is None:
            raise AccountError(f"no user {name!r}")
        _write_entries(path, entries)


def list_users(data_dir: Path) -> list[str]:
    """The registered names, sorted."""
    return sorted(read_entries(users_path(data_dir)))


class Accounts:
    """The server's view of the accounts file, re-read when the file changes.

    `threaded` runs scrypt in a worker thread (the server); tests under a mock clock, whose
    time would jump while a thread works, check inline with cheap parameters.
    """

    def __init__(self, path: Path, *, threaded: bool = True) -> None:
        self.path = path
        self._threaded = threaded
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, Entry] = {}
        self._limiter: trio.CapacityLimiter | None = None  # made in trio's run, on first use
        self.refresh(strict=True)

    def __repr__(self) -> str:
        return f"<Accounts {self.path} users={len(self._entries)}>"

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, *, strict: bool = False) -> None:
        """Re-read the file if it changed; with `strict`, a bad file raises AccountError."""
        try:
            stamp = self._current_stamp()
            if stamp == self._stamp and self._stamp is not None:
                return
            entries = read_entries(self.path)
        except (AccountError, OSError) as exc:
            if strict:
                raise AccountError(str(exc)) from None
            logger.error("accounts not reloaded, keeping the old ones: %s", exc)
            return
        self._stamp, self._entries = stamp, entries

    def registered(self, name: str) -> bool:
        """Whether `name` belongs to an account (as of the last refresh)."""
        return name in self._entries

    async def check(self, name: str, token: str | None) -> TokenCheck:
        """Refresh, then say whether `name` is registered and `token` is its token."""
        entry = self._entry_to_check(name, token)
        if isinstance(entry, TokenCheck):
            return entry
        assert token is not None
        if self._threaded:
            if self._limiter is None:
                self._limiter = trio.CapacityLimiter(KDF_THREADS)
            valid = await trio.to_thread.run_sync(entry.matches, token, limiter=self._limiter)
            return TokenCheck(True, valid)
        return TokenCheck(True, entry.matches(token))

    def check_sync(self, name: str, token: str | None) -> TokenCheck:
        """`check` for fork mode, whose connection process may block."""
        entry = self._entry_to_check(name, token)
        if isinstance(entry, TokenCheck):
            return entry
        assert token is not None
        return TokenCheck(True, entry.matches(token))

    def _entry_to_check(self, name: str, token: str | None) -> Entry | TokenCheck:
        """The entry whose hash must be computed, or the answer if none must be."""
        self.refresh()
        entry = self._entries.get(name)
        if entry is None or token is None:
            return TokenCheck(registered=entry is not None, valid=False)
        return entry
