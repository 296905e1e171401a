"""The rules every user name, message text and client message id must follow."""

from __future__ import annotations

import unicodedata

MAX_USER_CHARS = 32
#: The papayaChat dialect names its user on every line, and the original client puts no bound
#: on that name: accept up to this many UTF-8 bytes (the native dialect keeps MAX_USER_CHARS).
MAX_PAPAYA_USER_BYTES = 256
MAX_TEXT_LINES = 100
MAX_CLIENT_ID_CHARS = 64
MAX_TOKEN_CHARS = 128
KEY_CHARS = 128

#: Characters that show as nothing although their category is a visible one (letters, marks,
#: symbols): Hangul fillers, the Braille blank, the combining grapheme joiner, Khmer inherent
#: vowels and the variation selectors. A name made of them looks empty or like another's.
INVISIBLE = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def user_problem(user: str) -> str | None:
    """Return why `user` is not an acceptable user name, or None if it is."""
    if not 1 <= len(user) <= MAX_USER_CHARS:
        return f"user name must be 1 to {MAX_USER_CHARS} characters"
    return _name_problem(user)


def papaya_user_problem(user: str) -> str | None:
    """Like `user_problem`, with the papayaChat dialect's longer bound (in UTF-8 bytes)."""
    if not user or not _encodable(user) or len(user.encode()) > MAX_PAPAYA_USER_BYTES:
        return f"user name must be 1 to {MAX_PAPAYA_USER_BYTES} bytes of UTF-8"
    return _name_problem(user)


def _name_problem(user: str) -> str | None:
    if not user.isprintable() or any(ch.isspace() for ch in user):
        # isprintable() is False for every character of categories C (Cc controls, Cf format
        # characters such as bidi controls and zero-width ones, Cs, Co, Cn) and Z (Zl, Zp,
        # Zs but the ASCII space, which isspace() catches).
        return "user name must not contain whitespace, control, format or bidi control characters"
    if any(ch in INVISIBLE for ch in user) or unicodedata.category(user[0]).startswith("M"):
        return "user name must not contain invisible characters or start with a combining mark"
    if not _encodable(user):
        return "user name is not valid unicode"
    return None


def text_problem(text: str, max_bytes: int, *, allow_empty: bool = False) -> tuple[str, str] | None:
    """Return (error code, reason) if `text` is not an acceptable message, or None if it is.

    A text may hold newlines (at most MAX_TEXT_LINES lines) but no other control character.
    Only the papayaChat dialect may send an empty text (`allow_empty`), as its client can.
    """
    if not text and not allow_empty:
        return "bad_text", "message text is empty"
    if not _encodable(text):
        return "bad_text", "message text is not valid unicode"
    if len(text.encode()) > max_bytes:
        return "message_too_long", f"message text is longer than {max_bytes} bytes"
    if any(ch != "\n" and unicodedata.category(ch) == "Cc" for ch in text):
        return "bad_text", "message text must not contain control characters other than newlines"
    if text.count("\n") >= MAX_TEXT_LINES:
        return "bad_text", f"message text has more than {MAX_TEXT_LINES} lines"
    return None


def token_problem(token: str) -> str | None:
    """Return why `token` cannot be a personal token, or None if it could be."""
    if not 1 <= len(token) <= MAX_TOKEN_CHARS or not all("!" <= ch <= "~" for ch in token):
        return f"token must be 1 to {MAX_TOKEN_CHARS} printable ASCII characters"
    return None


def client_id_problem(client_id: str) -> str | None:
    """Return why `client_id` is not an acceptable client message id, or None if it is."""
    if not 1 <= len(client_id) <= MAX_CLIENT_ID_CHARS:
        return f"id must be 1 to {MAX_CLIENT_ID_CHARS} characters"
    if not all("!" <= ch <= "~" for ch in client_id):
        return "id must be printable ASCII without spaces"
    return None


def key_problem(key: str) -> str | None:
    """Return why `key` cannot be the shared key, or None if it can."""
    if len(key) != KEY_CHARS or not all("!" <= ch <= "~" for ch in key):
        return f"the key must be exactly {KEY_CHARS} printable ASCII characters without spaces"
    if key.startswith("{"):
        # A papayaChat client opens with the key, and a first byte "{" means the native dialect.
        return "the key must not start with '{'"
    return None


def _encodable(s: str) -> bool:
    # json.loads turns "\ud800" into a lone surrogate, which cannot be stored or sent on.
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True
