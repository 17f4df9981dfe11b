"""Certificates for mutual TLS between brand node and partners.

``make_certificates`` writes a private CA and a server and a client
certificate signed by it (via ``cryptography``). Private keys are written with
mode 0600. Both sides then verify each other against the CA; loading the
files is ``cleanroom.proto.transport.load_tls`` (the partner SDK uses it too).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cleanroom.proto.transport import CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY

CLUSTER_CERT, CLUSTER_KEY = "cluster.pem", "cluster.key"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cleanroom"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _authority(now: dt.datetime, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("cleanroom CA"))
        .issuer_name(_name("cleanroom CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


def _leaf(
    authority: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    usages: list[x509.ObjectIdentifier],
    hosts: tuple[str, ...],
    now: dt.datetime,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = authority
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_certificates(
    out: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"), days: int = 365
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    authority = _authority(now, days)
    ca_cert = authority[0]
    server_cert, server_key = _leaf(
        authority, "cleanroom brand node", [ExtendedKeyUsageOID.SERVER_AUTH], hosts, now, days
    )
    client_cert, client_key = _leaf(
        authority, "cleanroom partner", [ExtendedKeyUsageOID.CLIENT_AUTH], hosts, now, days
    )
    pem = serialization.Encoding.PEM
    (out / CA_CERT).write_bytes(ca_cert.public_bytes(pem))
    (out / SERVER_CERT).write_bytes(server_cert.public_bytes(pem))
    (out / CLIENT_CERT).write_bytes(client_cert.public_bytes(pem))
    _write_key(out / SERVER_KEY, server_key)
    _write_key(out / CLIENT_KEY, client_key)
    # The CA key is not kept: new certificates mean a new CA, which keeps a
    # stolen directory from minting more identities.
    return [out / n for n in (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY)]


def make_cluster_certificates(
    out: Path, *, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"), days: int = 365
) -> list[Path]:
    """A CA of one party's own Dask cluster and one certificate for its scheduler, workers
    and clients (Dask's peers are servers and clients both). Never the CA of the node's
    gRPC: that one signed the partner's certificate, which must not reach the brand's
    workers and the session keys in their memory."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    authority = _authority(now, days)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert, key = _leaf(authority, "cleanroom cluster", usages, hosts, now, days)
    pem = serialization.Encoding.PEM
    (out / CA_CERT).write_bytes(authority[0].public_bytes(pem))
    (out / CLUSTER_CERT).write_bytes(cert.public_bytes(pem))
    _write_key(out / CLUSTER_KEY, key)
    return [out / n for n in (CA_CERT, CLUSTER_CERT, CLUSTER_KEY)]
