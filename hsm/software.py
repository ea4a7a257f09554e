"""Software HSM backend: HMAC-SHA256 (WeChat Pay v2 form), SHA256withRSA, HMAC-SM3, and keyed
fingerprints of card numbers / payment codes for matching without storing them."""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Sign = Callable[[bytes], str]
Verify = Callable[[bytes, str], bool]

ALGORITHMS = ("wechat-hmac-sha256", "rsa-sha256", "hmac-sm3")


class KeyError_(Exception):
    """A key file is missing or not of the kind its algorithm needs. The message names the
    file, never its content."""


class SoftwareHsm:
    @staticmethod
    def is_costly(algorithm: str) -> bool:
        """True for operations worth a thread of their own: an RSA private-key operation takes
        milliseconds, an HMAC or an RSA verification microseconds."""
        return algorithm == "rsa-sha256"

    def __init__(self, base_dir: Path | str = ".") -> None:
        self._base = Path(base_dir)

    def _read(self, key_file: str) -> bytes:
        path = self._base / key_file
        try:
            return path.read_bytes()
        except OSError as exc:
            raise KeyError_(f"cannot read key file {path}: {exc.strerror}") from None

    def _secret(self, key_file: str) -> bytes:
        secret = self._read(key_file).strip()
        if len(secret) < 16:
            raise KeyError_(f"key file {self._base / key_file}: a secret key needs at least 16 bytes")
        return secret

    def signer(self, algorithm: str, key_file: str) -> Sign:
        """A function that signs bytes with the key in ``key_file`` and returns the signature text
        in the channel's encoding (upper hex, base64 or lower hex)."""
        if algorithm == "wechat-hmac-sha256":
            secret = self._secret(key_file)
            suffix = b"&key=" + secret
            return lambda data: std_hmac.new(secret, data + suffix, "sha256").hexdigest().upper()
        if algorithm == "hmac-sm3":
            secret = self._secret(key_file)
            return lambda data: _hmac_sm3(secret, data).hex()
        if algorithm == "rsa-sha256":
            key = self._private_key(key_file)
            return lambda data: base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
        raise KeyError_(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")

    def verifier(self, algorithm: str, key_file: str) -> Verify:
        """A function that checks a signature text against bytes, with the key (HMAC) or the
        public key (RSA) in ``key_file``."""
        if algorithm in ("wechat-hmac-sha256", "hmac-sm3"):
            sign = self.signer(algorithm, key_file)
            return lambda data, signature: std_hmac.compare_digest(sign(data).lower(), signature.lower())
        if algorithm == "rsa-sha256":
            public = self._public_key(key_file)

            def verify(data: bytes, signature: str) -> bool:
                try:
                    public.verify(base64.b64decode(signature, validate=True), data, padding.PKCS1v15(), hashes.SHA256())
                except (InvalidSignature, binascii.Error, ValueError):
                    return False
                return True

            return verify
        raise KeyError_(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")

    def fingerprinter(self, key_file: str) -> Callable[[str], bytes]:
        """Keyed hash of a card number or payment code: matches equal numbers, reveals nothing."""
        secret = self._secret(key_file)
        return lambda text: std_hmac.new(secret, text.encode(), "sha256").digest()

    def _private_key(self, key_file: str) -> rsa.RSAPrivateKey:
        try:
            key = serialization.load_pem_private_key(self._read(key_file), password=None)
        except ValueError:
            raise KeyError_(f"key file {self._base / key_file} is not a PEM private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyError_(f"key file {self._base / key_file} is not an RSA private key")
        return key

    def _public_key(self, key_file: str) -> rsa.RSAPublicKey:
        try:
            key = serialization.load_pem_public_key(self._read(key_file))
        except ValueError:
            raise KeyError_(f"key file {self._base / key_file} is not a PEM public key") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyError_(f"key file {self._base / key_file} is not an RSA public key")
        return key


def _hmac_sm3(secret: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(secret, hashes.SM3())
    mac.update(data)
    return mac.finalize()
