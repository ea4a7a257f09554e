"""Algorithms on clear key material: what the software HSM runs inside itself, and what the far
side of the wire (a terminal with its own keys, a channel simulator) runs for its part.

Nothing here stores, logs or returns a key it was not given. PIN blocks follow ISO 9564 through
``psec``; DES comes from ``cryptography``'s decrepit TripleDES (double-length keys as K1 K2 K1).
"""

from __future__ import annotations

import base64
import binascii
import hmac as std_hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from psec import pinblock

from hsm import sm2

Sign = Callable[[bytes], str]
Verify = Callable[[bytes, str], bool]

DES_KEY_BYTES = 16  # double-length 3DES: terminal master keys, MAK, PIK, zone PIN keys
MAC_ALGORITHMS = ("x9.19", "unionpay-ecb")
_ZERO_BLOCK = bytes(8)


class KeyMaterialError(Exception):
    """Key material that is not of the kind its algorithm needs. The message never holds it."""


# -- DES family ---------------------------------------------------------------------------------


def _tdes(key: bytes) -> TripleDES:
    if len(key) == 8:
        return TripleDES(key * 3)
    if len(key) == 16:
        return TripleDES(key + key[:8])
    raise KeyMaterialError(f"a DES key has 8 or 16 bytes, not {len(key)}")


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(_tdes(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(_tdes(key), modes.ECB()).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def check_value(key: bytes) -> str:
    """The key check value of spec section 7: the key encrypting 8 zero bytes, first 4 bytes, hex."""
    return tdes_ecb_encrypt(key, _ZERO_BLOCK)[:4].hex().upper()


def random_des_key() -> bytes:
    """A double-length DES key with odd parity in every byte."""
    return bytes(b & 0xFE | (bin(b >> 1).count("1") + 1) % 2 for b in os.urandom(DES_KEY_BYTES))


def _zero_pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8) if data else _ZERO_BLOCK  # ISO 9797-1 padding method 1


def x919_mac(key: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 MAC algorithm 3, padding 1): single-DES CBC under the
    left half, then the last block decrypted under the right half and encrypted under the left."""
    left, right = key[:8], key[8:]
    padded = _zero_pad(data)
    encryptor = Cipher(_tdes(left), modes.CBC(_ZERO_BLOCK)).encryptor()
    last = (encryptor.update(padded) + encryptor.finalize())[-8:]
    return tdes_ecb_encrypt(left, tdes_ecb_decrypt(right, last))


def unionpay_ecb_mac(key: bytes, data: bytes) -> bytes:
    """The UnionPay POS "ECB" MAC: XOR of all 8-byte blocks, as 16 hex characters; the first 8
    encrypted, XORed with the last 8, encrypted again; the first 8 hex characters of that, as
    ASCII, are the 8-byte MAC."""
    padded = _zero_pad(data)
    folded = 0
    for i in range(0, len(padded), 8):
        folded ^= int.from_bytes(padded[i : i + 8], "big")
    text = folded.to_bytes(8, "big").hex().upper().encode()
    first = tdes_ecb_encrypt(key, text[:8])
    second = tdes_ecb_encrypt(key, bytes(a ^ b for a, b in zip(first, text[8:], strict=True)))
    return second.hex().upper()[:8].encode()


SIGN_ON_VARIANT = 0xA6


def sign_on_variant(tmk: bytes) -> bytes:
    """The key a terminal MACs its sign-on under: its TMK with every byte XOR ``SIGN_ON_VARIANT``.
    A variant, as payment HSMs separate a key's uses, so the TMK itself never MACs anything."""
    return bytes(b ^ SIGN_ON_VARIANT for b in tmk)


def mac(algorithm: str, key: bytes, data: bytes) -> bytes:
    if algorithm == "x9.19":
        return x919_mac(key, data)
    if algorithm == "unionpay-ecb":
        return unionpay_ecb_mac(key, data)
    raise KeyMaterialError(f"unknown MAC algorithm {algorithm!r}; known: {', '.join(MAC_ALGORITHMS)}")


def pin_block(pin: str, pan: str) -> bytes:
    """ISO 9564 format 0 clear PIN block (a terminal builds it, then encrypts it under its PIK)."""
    return pinblock.encode_pinblock_iso_0(pin, pan)


def pin_of_block(block: bytes, pan: str) -> str:
    """The PIN in a clear format 0 block; ``ValueError`` when the block is not format 0 for this PAN."""
    return pinblock.decode_pinblock_iso_0(block, pan)


# -- SM4 (e-CNY's encryption of sensitive fields) --------------------------------------------------


SM4_KEY_BYTES = 16


def sm4_check_value(key: bytes) -> str:
    return _block_check_value(algorithms.SM4(key))


def aes_check_value(key: bytes) -> str:
    """The check value of an AES key (the software HSM's LMK), made as the DES and SM4 ones are."""
    return _block_check_value(algorithms.AES(key))


def _block_check_value(cipher: algorithms.BlockCipherAlgorithm) -> str:
    """The key encrypting a zero block, first 4 bytes, hex."""
    encryptor = Cipher(cipher, modes.ECB()).encryptor()
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:4].hex().upper()


def sm4_cbc_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4-CBC with PKCS#7 padding; a random IV is put in front of the ciphertext."""
    iv = os.urandom(16)
    padded = data + bytes([16 - len(data) % 16]) * (16 - len(data) % 16)
    encryptor = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def sm4_cbc_decrypt(key: bytes, data: bytes) -> bytes:
    if len(data) < 32 or len(data) % 16:
        raise ValueError("SM4-CBC text is an IV and whole blocks")
    decryptor = Cipher(algorithms.SM4(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= 16 or padded[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad SM4-CBC padding")
    return padded[:-pad]


# -- channel API signatures ---------------------------------------------------------------------
#
# A table of schemes by name: how a signature is made from key material and data, and how it is
# written (upper hex, lower hex, base64). A channel names the schemes its account uses; none is
# named after a channel.


def _hmac_sha256_appended_key(material: bytes) -> Sign:
    """HMAC-SHA256 keyed with the secret over ``data + b"&key=" + secret``, upper-case hex (the
    scheme of WeChat Pay v2's ``sign_type=HMAC-SHA256``)."""
    secret = _secret(material)
    suffix = b"&key=" + secret
    return lambda data: std_hmac.digest(secret, data + suffix, "sha256").hex().upper()


def _hmac_sha256(material: bytes) -> Sign:
    secret = _secret(material)
    return lambda data: std_hmac.digest(secret, data, "sha256").hex()


def _hmac_sm3(material: bytes) -> Sign:
    secret = _secret(material)
    return lambda data: _hmac_sm3_digest(secret, data).hex()


def _rsa_sha256(material: bytes) -> Sign:
    key = _rsa_private(material)
    return lambda data: base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def _rsa_sha256_verifier(material: bytes) -> Verify:
    public = _rsa_public(material)

    def verify(data: bytes, signature: str) -> bool:
        try:
            public.verify(base64.b64decode(signature, validate=True), data, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    return verify


def _sm2_sm3(material: bytes) -> Sign:
    key = _sm2_private(material)
    return lambda data: base64.b64encode(key.sign(data)).decode()


def _sm2_sm3_verifier(material: bytes) -> Verify:
    public = _sm2_public(material)

    def verify(data: bytes, signature: str) -> bool:
        try:
            return public.verify(data, base64.b64decode(signature, validate=True))
        except (binascii.Error, ValueError):
            return False

    return verify


def _mac_verifier(make: Callable[[bytes], Sign]) -> Callable[[bytes], Verify]:
    """A MAC is checked by making it again and comparing in constant time (hex in either case).
    A signature with a character outside ASCII is simply wrong (``compare_digest`` would raise on
    it: anyone could make a notice's reading fail with one)."""

    def verifier_of(material: bytes) -> Verify:
        sign = make(material)
        return lambda data, signature: signature.isascii() and std_hmac.compare_digest(
            sign(data).lower(), signature.lower()
        )

    return verifier_of


@dataclass(frozen=True, slots=True)
class Scheme:
    signer: Callable[[bytes], Sign]  # from the private key or shared secret
    verifier: Callable[[bytes], Verify]  # from the public key or shared secret
    # Worth a thread of its own: it takes a while and holds no GIL meanwhile (OpenSSL's RSA), so
    # the event loop goes on, and on a node with more cores several sign at once. SM2 here is
    # Python and GMP under the GIL: a thread would only add the hops there and back.
    threaded: bool


SCHEMES: dict[str, Scheme] = {
    "hmac-sha256": Scheme(_hmac_sha256, _mac_verifier(_hmac_sha256), threaded=False),
    "hmac-sha256-appended-key": Scheme(
        _hmac_sha256_appended_key, _mac_verifier(_hmac_sha256_appended_key), threaded=False
    ),
    "hmac-sm3": Scheme(_hmac_sm3, _mac_verifier(_hmac_sm3), threaded=False),
    "rsa-sha256": Scheme(_rsa_sha256, _rsa_sha256_verifier, threaded=True),
    "sm2-sm3": Scheme(_sm2_sm3, _sm2_sm3_verifier, threaded=False),
}


def _scheme(algorithm: str) -> Scheme:
    scheme = SCHEMES.get(algorithm)
    if scheme is None:
        raise KeyMaterialError(f"unknown algorithm {algorithm!r}; known: {', '.join(SCHEMES)}")
    return scheme


def signer(algorithm: str, material: bytes) -> Sign:
    """A function that signs bytes with ``material`` and returns the signature text in the
    scheme's encoding."""
    return _scheme(algorithm).signer(material)


def verifier(algorithm: str, material: bytes) -> Verify:
    """A function that checks a signature text against bytes, with the shared secret (HMAC) or
    the public key (RSA, SM2) in ``material``."""
    return _scheme(algorithm).verifier(material)


def signs_in_thread(algorithm: str) -> bool:
    """Whether a channel actor signs with ``algorithm`` in its signing threads (``Scheme.threaded``)."""
    return _scheme(algorithm).threaded


def fingerprinter(material: bytes) -> Callable[[str], bytes]:
    """Keyed hash of a card number or payment code: matches equal numbers, reveals nothing."""
    secret = _secret(material)
    return lambda text: std_hmac.digest(secret, text.encode(), "sha256")


def _secret(material: bytes) -> bytes:
    secret = material.strip()
    if len(secret) < 16:
        raise KeyMaterialError("a secret key needs at least 16 bytes")
    return secret


def _hmac_sm3_digest(secret: bytes, data: bytes) -> bytes:
    mac_ = hmac.HMAC(secret, hashes.SM3())
    mac_.update(data)
    return mac_.finalize()


def _rsa_private(material: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(material, password=None)
    except ValueError:
        raise KeyMaterialError("not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError("not an RSA private key")
    return key


def _rsa_public(material: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(material)
    except ValueError:
        raise KeyMaterialError("not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyMaterialError("not an RSA public key")
    return key


def _sm2_private(material: bytes) -> sm2.SigningKey:
    """An SM2 private key as 64 hex characters (the scalar d)."""
    try:
        return sm2.SigningKey(int(material.strip().decode("ascii"), 16))
    except (ValueError, UnicodeDecodeError):
        raise KeyMaterialError("not an SM2 private key (64 hex characters)") from None


def _sm2_public(material: bytes) -> sm2.VerifyingKey:
    """An SM2 public key as 130 hex characters (04 || x || y)."""
    try:
        return sm2.VerifyingKey.from_bytes(bytes.fromhex(material.strip().decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise KeyMaterialError("not an SM2 public key (04 || x || y in hex)") from None
