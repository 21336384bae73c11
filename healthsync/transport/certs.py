"""A local certificate authority and one server certificate it signs, made once and reused.

Why a CA and not one self-signed certificate: a browser or ``curl`` is told
once to trust ``ca.pem``, and the server certificate can then be renewed (new
host names, expiry) without anyone trusting anything again. Ray's TLS mode is
mutual: every node and every driver presents ``server.pem`` and checks its
peer against ``ca.pem``, so the same three files serve a whole cluster.

Layout of a TLS directory (keys are 0600, the directory 0700)::

    ca.pem  ca-key.pem  server.pem  server-key.pem
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from healthsync.errors import HealthSyncError

#: Names every local server certificate covers.
LOCAL_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity browsers accept for a server certificate


@dataclass(frozen=True)
class TlsFiles:
    """Where a TLS directory's files are; what this call created (``new_ca``: the CA too)."""

    ca: Path
    cert: Path
    key: Path
    created: bool = False
    new_ca: bool = False

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> TlsFiles:
        directory = Path(directory)
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")

    @property
    def ca_key(self) -> Path:
        return self.ca.with_name("ca-key.pem")


def ensure_certificates(
    directory: str | os.PathLike[str], hosts: Iterable[str] = LOCAL_HOSTS
) -> TlsFiles:
    """The CA and server certificate in ``directory``, creating what is missing.

    An existing CA is always kept (it is what people have trusted). An existing
    server certificate is kept if it is signed by that CA, covers every name in
    ``hosts`` and is valid for at least another 30 days; otherwise a new one is
    issued by the same CA.
    """
    files = TlsFiles.in_directory(directory)
    hosts = list(dict.fromkeys([*LOCAL_HOSTS, *hosts]))
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    created = new_ca = False
    if files.ca.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    else:
        ca_cert, ca_key = _new_ca()
        _write(files.ca_key, _key_pem(ca_key), private=True)
        _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
        created = new_ca = True
    if created or not _server_cert_ok(files, ca_cert, hosts):
        cert, key = _new_server_cert(ca_cert, ca_key, hosts)
        _write(files.key, _key_pem(key), private=True)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        created = True
    return TlsFiles(files.ca, files.cert, files.key, created=created, new_ca=new_ca)


def check_pair(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """Refuse a user-supplied certificate and key that are missing, unreadable or do not match."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as err:
        raise HealthSyncError(f"cannot read certificate {cert}: {_reason(err)}") from None
    try:
        private_key = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise HealthSyncError(f"cannot read private key {key}: {_reason(err)}") from None
    if _public_bytes(certificate.public_key()) != _public_bytes(private_key.public_key()):
        raise HealthSyncError(f"private key {key} does not belong to certificate {cert}")


def ray_tls_env(files: TlsFiles) -> dict[str, str]:
    """The environment Ray's TLS mode reads, in every head, worker and driver process."""
    return {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(files.cert.resolve()),
        "RAY_TLS_SERVER_KEY": str(files.key.resolve()),
        "RAY_TLS_CA_CERT": str(files.ca.resolve()),
    }


def machine_hosts() -> list[str]:
    """This machine's host name and addresses, by which Ray's nodes may reach it.

    Ray advertises a node by the address of the interface that routes outwards
    (it asks the kernel which one a UDP socket to a public address would use;
    no packet is sent), so that address must be in the certificate too.
    """
    hosts = [socket.gethostname()]
    with contextlib.suppress(OSError):  # a name that does not resolve: the name alone
        hosts.append(socket.gethostbyname(hosts[0]))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("8.8.8.8", 53))
        hosts.append(udp.getsockname()[0])
    return list(dict.fromkeys(hosts))


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0]


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` atomically; keys are created 0600 and never readable by others."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HealthSync local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"HealthSync local CA {socket.gethostname()}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(host: str) -> list[x509.GeneralName]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [x509.DNSName(host)]
    # Some TLS stacks (gRPC's, which Ray uses) match an address against DNS names too.
    return [x509.IPAddress(address), x509.DNSName(host)]


def _new_server_cert(
    ca_cert: x509.Certificate, ca_key, hosts: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([name for host in hosts for name in _san(host)]),
            critical=False,
        )
        # Ray's nodes present this certificate as clients too (mutual TLS).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _server_cert_ok(files: TlsFiles, ca_cert: x509.Certificate, hosts: list[str]) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        check_pair(files.cert, files.key)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound, HealthSyncError):
        return False
    covered = {str(n.value) for n in names}
    fresh = cert.not_valid_after_utc - _now() > datetime.timedelta(days=30)
    return fresh and set(hosts) <= covered
