"""What a stored key is: kind, label, version, the key encrypted under the LMK, and its check
value. Records carry no clear key material and may be stored, listed and passed around freely."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from msgspec import Struct

from hsm.algorithms import check_value, sm4_check_value


class KeyKind(StrEnum):
    TMK = "tmk"  # terminal master key, loaded into the terminal out of band
    MAK = "mak"  # terminal MAC key, sent under the TMK at sign-on
    PIK = "pik"  # terminal PIN key, sent under the TMK at sign-on
    ZPK = "zpk"  # zone PIN key shared with a card channel
    SECRET = "secret"  # channel API secret (HMAC), card-number fingerprint key
    PRIVATE = "private"  # channel API private key (RSA PEM, SM2 hex)
    PUBLIC = "public"  # channel's public key (RSA PEM, SM2 hex)
    DEK = "dek"  # SM4 data key shared with a channel for its encrypted fields


DES_KINDS = frozenset({KeyKind.TMK, KeyKind.MAK, KeyKind.PIK, KeyKind.ZPK})
HEX_KINDS = DES_KINDS | {KeyKind.DEK}  # written in files as hex


class KeyRecord(Struct, frozen=True, kw_only=True):
    label: str
    version: int
    kind: KeyKind
    blob: bytes  # the key under the LMK (software: AES-256-GCM; PKCS#11: the token's AES key)
    check_value: str  # DES keys: spec section 7 KCV; SM4: the same with SM4; others: first 4 bytes of SHA-256

    def aad(self) -> bytes:
        return associated_data(self.label, self.version, self.kind)


def associated_data(label: str, version: int, kind: KeyKind) -> bytes:
    """Bound to the ciphertext, so a blob cannot be passed off as another key or kind."""
    return f"paysw-key|{label}|{version}|{kind}".encode()


def check_value_of(kind: KeyKind, material: bytes) -> str:
    if kind in DES_KINDS:
        return check_value(material)
    if kind is KeyKind.DEK:
        return sm4_check_value(material)
    return hashlib.sha256(material).hexdigest()[:8].upper()


def terminal_label(kind: KeyKind, terminal_id: str) -> str:
    return f"{kind}:{terminal_id}"
