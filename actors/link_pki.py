"""A certificate authority of the links' own (``actors.link``) and certificates it signs: what
``[ray] link_tls_cert / link_tls_key / link_tls_ca`` name. For a bank whose PKI issues them this
is not needed; it serves a first cluster, the benchmarks and the tests. The CA's private key is
never written: to add a node, copy a party's files there."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from actors.settings import LinkTls


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool, days: int) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, ca_name: str, parties: tuple[str, ...], days: int = 1) -> dict[str, LinkTls]:
    """A CA in the new ``folder`` (``ca.pem``) and, for each party, its key (``PARTY.key``, owner
    only) and a certificate the CA signed (``PARTY.pem``), valid for ``days``."""
    folder.mkdir(mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True, days=days)
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out = {}
    for party in parties:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(party, key, ca_name, ca_key, ca=False, days=days)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(folder / f"{party}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem_key)
        (folder / f"{party}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[party] = LinkTls(
            cert=str(folder / f"{party}.pem"), key=str(folder / f"{party}.key"), ca=str(folder / "ca.pem")
        )
    return out
