"""Certificates made at test time with trustme, and TLS servers and clients that use them."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.real_server import RunningServer, ServerFactory


@dataclass(frozen=True)
class Pki:
    """A test CA and one server certificate it issued, as files."""

    ca: trustme.CA
    ca_file: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """What a client that trusts the test CA uses."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def leaf_der(self) -> bytes:
        """The server certificate, DER, as a client sees it."""
        chain = self.cert.read_text()
        return ssl.PEM_cert_to_DER_cert(chain[: chain.index(ssl.PEM_FOOTER) + len(ssl.PEM_FOOTER)])

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def make_pki(folder: Path, *names: str, not_after: datetime.datetime | None = None) -> Pki:
    """A fresh root CA, an intermediate, and a certificate it issued for `names` (default
    127.0.0.1 and localhost); the certificate file holds the chain, leaf first."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.create_child_ca().issue_cert(
        *(names or ("127.0.0.1", "localhost")), not_after=not_after
    )
    pki = Pki(ca, folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(pki.key))
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_server(trio_servers: ServerFactory, pki: Pki) -> RunningServer:
    """A trio-mode server with TLS on its TCP and HTTP ports."""
    return trio_servers.start(*pki.server_args())
