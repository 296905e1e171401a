"""The server's TLS context: what it offers, and a reload that never half-replaces a pair."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from papaya_trio.tls import TlsError, reload_context, server_context
from tests.tls.conftest import Pki, make_pki


def shown_certificate(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """The certificate a client is shown by a server with `server` (in-memory handshake)."""
    server_side = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(*server_side, server_side=True)
    c = client.wrap_bio(*client_side, server_hostname="127.0.0.1")
    for _ in range(10):  # a TLS 1.3 handshake takes two round trips
        for endpoint in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                endpoint.do_handshake()
        server_side[0].write(client_side[1].read())
        client_side[0].write(server_side[1].read())
    certificate = c.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def test_tls_1_2_is_the_minimum(pki: Pki) -> None:
    context = server_context(pki.cert, pki.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_bad_pair_leaves_the_context_as_it_was(pki: Pki, tmp_path: Path) -> None:
    context = server_context(pki.cert, pki.key)
    other = make_pki(tmp_path / "other")
    with pytest.raises(TlsError, match="key values mismatch"):
        reload_context(context, other.cert, pki.key)  # a new certificate, the old key
    assert shown_certificate(context, pki.client_context()) == pki.leaf_der
    reload_context(context, other.cert, other.key)
    assert shown_certificate(context, other.client_context()) == other.leaf_der


def test_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=f"cannot read {tmp_path / 'none'}: No such file"):
        server_context(pki.cert, tmp_path / "none")
    with pytest.raises(TlsError, match="are not a PEM certificate and its private key"):
        server_context(pki.key, pki.cert)
