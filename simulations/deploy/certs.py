"""TLS material for a deployed federation, generated locally with ``cryptography``.

Flower's SuperLink serves its Fleet, Control and Runtime APIs over TLS with one server certificate
(``--ssl-certfile/--ssl-keyfile``, plus ``--ssl-ca-certfile`` for the SuperExec it spawns), while
SuperNodes (``--root-certificates``) and ``flwr run`` (``root-certificates`` in the federation entry)
only need the CA to verify it. Flower does not use client certificates (no mTLS; SuperNode identity is
a separate key-based mechanism), so none are generated. The SuperExec next to the SuperLink connects to
127.0.0.1, so the server certificate always names 127.0.0.1 and localhost besides any --host.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


class CertificateError(ValueError):
    """Certificates missing or unusable; the message says how to make them."""


@dataclass(frozen=True)
class CertPaths:
    """Where a certificate directory keeps each file (absolute paths: Flower requires them)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def superlink_args(self) -> list[str]:
        return ["--ssl-ca-certfile", str(self.ca_cert), "--ssl-certfile", str(self.server_cert),
                "--ssl-keyfile", str(self.server_key)]

    def supernode_args(self) -> list[str]:
        return ["--root-certificates", str(self.ca_cert)]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys are never world-readable
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_certificates(directory: str | Path, hosts: Sequence[str] = (), *, days: int = 365,
                          overwrite: bool = False) -> CertPaths:
    """Write a CA and a server certificate valid for 127.0.0.1, localhost and ``hosts``."""
    paths = CertPaths(Path(directory).expanduser().resolve())
    existing = [p for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key) if p.exists()]
    if existing and not overwrite:
        raise CertificateError(f"{existing[0]} already exists; pass --force to replace the certificates in "
                               f"{paths.directory}")
    if days < 1:
        raise CertificateError(f"--days {days} is not valid: expected an integer >= 1")
    paths.directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)

    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpfl federation CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _key()
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[-1] if hosts else "localhost")
                                 ]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    _write_key(paths.ca_key, ca_key)
    _write_key(paths.server_key, server_key)
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return paths


def certificate_hosts(cert_file: Path) -> list[str]:
    """The host names and IPs a certificate is valid for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
        [str(v) for v in san.get_values_for_type(x509.IPAddress)]


def load_certificates(directory: str | Path, *, need_server: bool = True) -> CertPaths:
    """Check a certificate directory holds what this side needs; say how to fix it when not."""
    paths = CertPaths(Path(directory).expanduser().resolve())
    needed = [paths.ca_cert] + ([paths.server_cert, paths.server_key] if need_server else [])
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise CertificateError(f"certificate directory {paths.directory} lacks {', '.join(missing)}; "
                               f"create it with `dpfl certs {paths.directory}` (add --host NAME for every "
                               "name clients use)")
    try:
        x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        if need_server:
            cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
            if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
                raise CertificateError(f"{paths.server_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                                       f"regenerate with `dpfl certs {paths.directory} --force`")
    except ValueError as exc:
        if isinstance(exc, CertificateError):
            raise
        raise CertificateError(f"{paths.directory}: not a PEM certificate ({exc})") from None
    return paths
