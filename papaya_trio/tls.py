"""TLS for the server: the one `ssl.SSLContext` both ports share, and its reload on SIGHUP.

Theory of operation
-------------------
`server_context` loads `tls_cert` (a PEM chain, leaf first) and `tls_key` once at start; the
TCP port (`trio.SSLListener`) and the HTTP port (the same, `https_compatible=True`) wrap every
accepted socket with it. Only TLS 1.2 and newer are offered, with the standard library's
default ciphers. `SSLListener.accept` only wraps the socket: the handshake happens on the
connection's first read, in its own handler task and under the deadline that covers the
client's first words (`auth_timeout` on the TCP port, `ws_handshake_timeout` on the HTTP
port), so a client that stalls its handshake blocks nobody and holds its slot no longer than
one that connects and says nothing.

`reload_context` loads a new pair into the *same* context, so no listener needs to change:
OpenSSL gives each connection its own reference to the certificate and key when the connection
is created, so connections already up keep the pair they started with and every connection
accepted afterwards gets the new one. `load_cert_chain` installs the certificate before it checks
the key against it, so a bad pair could leave the live context half-replaced; the pair is
therefore loaded into a scratch context first, and the live context is touched only if that
worked.
"""

from __future__ import annotations

import ssl
from pathlib import Path

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context holding `cert` and `key`; raises TlsError if they cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    _load(context, cert, key)
    return context


def reload_context(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Put a new pair in `context` for the connections to come; raises TlsError and leaves
    `context` as it was if the pair cannot be used."""
    server_context(cert, key)  # every check, on a scratch context
    _load(context, cert, key)


def _load(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path in (cert, key):  # load_cert_chain's own error does not say which file
        try:
            path.open("rb").close()
        except OSError as exc:
            raise TlsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None)
        reason = reason.lower().replace("_", " ") if reason else "no PEM data OpenSSL can use"
        raise TlsError(
            f"{cert} and {key} are not a PEM certificate and its private key ({reason})"
        ) from None
