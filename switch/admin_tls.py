"""TLS on the admin endpoint (``[switch] admin_tls_cert``, ``admin_tls_key``, ``admin_tls_ca``):
the server's context, and its clients' (``paysw channel``, the console), who speak https to it
when it is configured and check its certificate by ``admin_tls_ca`` (else the system's CAs)."""

from __future__ import annotations

import ssl
from pathlib import Path

from switch.config import Config


def server_tls(config: Config) -> ssl.SSLContext | None:
    """The admin listener's context; None when it serves plain http (loopback only)."""
    section = config.switch
    if not section.admin_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    base = Path(config.base_dir)
    context.load_cert_chain(base / section.admin_tls_cert, base / section.admin_tls_key)
    return context


def client_tls(config: Config) -> ssl.SSLContext | None:
    """What a client checks the admin endpoint's certificate by; None when it serves plain http."""
    section = config.switch
    if not section.admin_tls_cert:
        return None
    ca = Path(config.base_dir) / section.admin_tls_ca if section.admin_tls_ca else None
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def scheme(tls: ssl.SSLContext | None) -> str:
    return "https" if tls is not None else "http"
