"""`papaya-trio cert`: a self-signed certificate and its key, for a LAN without a CA.

The certificate names every host name and IP address it is given (subject alternative names,
which is what browsers and Python check), is valid for `serverAuth` only and is not a CA. The
key is ECDSA P-256, which every current browser and TLS library accepts. Clients trust it by
being given the certificate file itself (`papaya-chat --tls --ca-file CERT`), or by the
browser's exception for it. Both files are created owner-only, and neither is written if
either exists already.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Apple's platforms refuse server certificates valid for longer than this.
DEFAULT_DAYS = 825


class CertificateError(Exception):
    """The files cannot be written, or a name is not usable; the message says which."""


def subject_names(names: list[str]) -> list[x509.GeneralName]:
    """Each name as an IP address if it is one, else as a DNS name."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(ch.isspace() or ch in "/:" for ch in name):
                raise CertificateError(
                    f"{name!r} is neither a host name nor an IP address"
                ) from None
            result.append(x509.DNSName(name))
    return result


def make_certificate(names: list[str], now: datetime.datetime, days: int) -> tuple[bytes, bytes]:
    """A self-signed certificate for `names`, valid from `now` for `days`, and its private
    key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_certificate(
    cert_path: Path, key_path: Path, names: list[str], *, days: int = DEFAULT_DAYS
) -> None:
    """Write a new self-signed pair for `names`; never replaces an existing file."""
    for path in (cert_path, key_path):
        if path.exists():
            raise CertificateError(f"{path} already exists: not overwriting it")
    cert_pem, key_pem = make_certificate(names, datetime.datetime.now(datetime.UTC), days)
    written: list[Path] = []
    try:
        for path, data in ((key_path, key_pem), (cert_path, cert_pem)):
            _write_new(path, data)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink()
        raise CertificateError(f"cannot write {exc.filename}: {exc.strerror}") from None


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        path.unlink()  # ours (O_EXCL): never leave half a file behind
        raise
