"""TLS on the admin endpoint (``[switch] admin_tls_cert``, ``admin_tls_key``, ``admin_tls_ca``):
the server's context, made before anything starts so that a file it cannot use is a configuration
error; and its clients' (``paysw channel``, the console), who speak https to it when it is
configured and check its certificate by ``admin_tls_ca`` (else the system's CAs)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import tempfile
from pathlib import Path

import msgspec
from cryptography import x509

from hsm.secret_file import SecretFileError, read_secret
from switch.config import Config, ConfigError

log = logging.getLogger("paysw.admin")

RENEW_WITHIN = dt.timedelta(days=30)  # a certificate closer than this to its end is warned of (start, reload)


def server_tls(config: Config) -> ssl.SSLContext | None:
    """The admin listener's context (TLS 1.2 at least); None when it serves plain http (loopback
    only). ``ConfigError`` naming the setting for a key open to other users or that does not go
    with the certificate, a certificate out of its dates, a file that cannot be read."""
    section = config.switch
    if not section.admin_tls_cert:
        return None
    cert, key = _files(config)
    try:
        read_secret(key, "the admin TLS key", relaxed=section.demo)
    except SecretFileError as exc:
        raise ConfigError(f"$.switch.admin_tls_key: {exc}") from None
    _in_date(cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:  # a key under a passphrase is refused, not asked for on a terminal the switch may not have
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"$.switch.admin_tls_cert and admin_tls_key: cannot serve TLS with them: {exc}") from None
    return context


def renew_admin_tls(context: ssl.SSLContext | None, config: Config) -> None:
    """The certificate and key at the configured paths read again into the running ``context``
    (SIGHUP, ``paysw reload``): new connections get a renewed certificate with no restart. The
    pair is read once, into a private copy that is checked on a context of its own before the
    running one loads it (a pair that does not go together, loaded there, leaves it unable to
    shake hands; read twice, a renewal tool could change it in between): files it cannot serve
    with are logged, and the running pair stays."""
    if context is None:  # plain http: switching TLS on is a restart's
        return
    cert, key = _files(config)
    try:
        read_secret(key, "the admin TLS key", relaxed=config.switch.demo)  # its mode, as at start
        with tempfile.TemporaryDirectory(prefix="paysw-admin-tls-") as folder:  # the owner's alone
            copy = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            copy[0].write_bytes(cert.read_bytes())
            with os.fdopen(os.open(copy[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as secret:
                secret.write(key.read_bytes())  # owner-only, as server_tls checks the key it is given
            switch = msgspec.structs.replace(config.switch, admin_tls_cert=str(copy[0]), admin_tls_key=str(copy[1]))
            server_tls(msgspec.structs.replace(config, switch=switch))
            context.load_cert_chain(*copy, password=lambda: b"")
    except (ConfigError, SecretFileError, OSError, ssl.SSLError) as exc:
        log.error("the admin endpoint's certificate not read again: the running one stays", extra={"error": str(exc)})
        return
    log.info("the admin endpoint's certificate read again", extra={"file": str(cert)})


def client_tls(config: Config) -> ssl.SSLContext | None:
    """What a client checks the admin endpoint's certificate by; None when it serves plain http.
    ``ConfigError`` when ``admin_tls_ca`` cannot be read."""
    section = config.switch
    if not section.admin_tls_cert:
        return None
    ca = Path(config.base_dir) / section.admin_tls_ca if section.admin_tls_ca else None
    return trusting(ca, "$.switch.admin_tls_ca")


def admin_address(config: Config, instead: str) -> str:
    """Where a client of this configuration reaches the admin endpoint: ``admin_listen``, unless
    that is a wildcard and the endpoint speaks TLS (no certificate names 0.0.0.0): ``ConfigError``
    saying to give ``instead`` the address the certificate names."""
    if config.switch.admin_tls_cert and config.switch.admin_listen.rpartition(":")[0] == "0.0.0.0":
        raise ConfigError(f"$.switch.admin_listen is {config.switch.admin_listen}: give {instead} the address "
                          "the admin endpoint's certificate names")  # fmt: skip
    return config.switch.admin_listen


def trusting(ca: Path | None, where: str) -> ssl.SSLContext:
    """A client's context trusting ``ca`` alone (a file of PEM certificates: a CA's, or each
    host's own), or the system's CAs; ``ConfigError`` naming ``where`` it was given if unread."""
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{where}: cannot read the admin endpoint's CA {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def scheme(tls: ssl.SSLContext | None) -> str:
    return "https" if tls is not None else "http"


def _files(config: Config) -> tuple[Path, Path]:
    base = Path(config.base_dir)
    return base / config.switch.admin_tls_cert, base / config.switch.admin_tls_key


def _in_date(cert: Path) -> None:
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"$.switch.admin_tls_cert: cannot read a PEM certificate from {cert}: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ConfigError(
            f"$.switch.admin_tls_cert: {cert} is valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"to {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    if certificate.not_valid_after_utc - now < RENEW_WITHIN:
        log.warning(
            "the admin endpoint's certificate ends soon: renew it",
            extra={"file": str(cert), "not_after": certificate.not_valid_after_utc.isoformat()},
        )
